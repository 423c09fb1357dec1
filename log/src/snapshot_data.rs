//! The snapshot data openraft moves around: either one file (a snapshot being received), or a
//! stored snapshot read as one stream made of pieces on disk (a records file, then each cold
//! file behind a small header), so building a snapshot hard-links the cold files instead of
//! copying them. The stream format itself belongs to the projections; this only concatenates.

use std::future::Future;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};
use tokio::task::JoinHandle;

/// Largest read one blocking task does for the async reader (openraft asks for chunks of
/// its snapshot chunk size, 4 MiB here, in as many reads as it takes).
pub const PIECES_READ_BYTES_MAX: usize = 4 << 20;

/// One piece of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Bytes held in memory (a small header).
    Bytes(Vec<u8>),
    /// The first `len` bytes of a file.
    File { path: PathBuf, len: u64 },
}

impl Piece {
    fn len(&self) -> u64 {
        match self {
            Piece::Bytes(b) => b.len() as u64,
            Piece::File { len, .. } => *len,
        }
    }
}

/// Pieces read as one stream at any position. Every file is opened when the stream is, so a
/// snapshot replaced (its files unlinked) while it is being sent is still read whole.
#[derive(Debug)]
pub struct Pieces {
    pieces: Vec<Piece>,
    /// Stream offset of each piece's first byte.
    starts: Vec<u64>,
    /// The open file of each `Piece::File`, by piece.
    files: Vec<Option<std::fs::File>>,
    total: u64,
}

impl Pieces {
    /// Open every file of `pieces`.
    pub fn open(pieces: Vec<Piece>) -> io::Result<Pieces> {
        let mut starts = Vec::with_capacity(pieces.len());
        let mut files = Vec::with_capacity(pieces.len());
        let mut total = 0u64;
        for p in &pieces {
            starts.push(total);
            total += p.len();
            files.push(match p {
                Piece::Bytes(_) => None,
                Piece::File { path, .. } => Some(std::fs::File::open(path)?),
            });
        }
        Ok(Pieces { pieces, starts, files, total })
    }

    /// Bytes in the whole stream.
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Read up to `buf.len()` bytes at stream offset `pos` (fewer at a piece's end; 0 at the
    /// stream's end). A file shorter than its piece says is an error, not a short stream.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> io::Result<usize> {
        if pos >= self.total || buf.is_empty() {
            return Ok(0);
        }
        let i = self.starts.partition_point(|s| *s <= pos) - 1;
        let offset = pos - self.starts[i];
        let want = (self.pieces[i].len() - offset).min(buf.len() as u64) as usize;
        match &self.pieces[i] {
            Piece::Bytes(b) => {
                buf[..want].copy_from_slice(&b[offset as usize..offset as usize + want]);
                Ok(want)
            }
            Piece::File { path, .. } => {
                let Some(file) = &self.files[i] else { unreachable!("every file piece is opened") };
                let n = file.read_at(&mut buf[..want], offset)?;
                if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("{} ends before its {} bytes", path.display(), self.pieces[i].len()),
                    ));
                }
                Ok(n)
            }
        }
    }

    /// A `Read + Seek` over the stream, from its start.
    pub fn reader(self) -> PiecesReader {
        PiecesReader { pieces: self, pos: 0 }
    }
}

/// Blocking `Read + Seek` over [`Pieces`].
#[derive(Debug)]
pub struct PiecesReader {
    pieces: Pieces,
    pos: u64,
}

impl Read for PiecesReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pieces.read_at(self.pos, buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn seek_to(pos: u64, len: u64, to: SeekFrom) -> io::Result<u64> {
    let target = match to {
        SeekFrom::Start(n) => Some(n),
        SeekFrom::End(d) => len.checked_add_signed(d),
        SeekFrom::Current(d) => pos.checked_add_signed(d),
    };
    target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the stream's start"))
}

impl Seek for PiecesReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.pos = seek_to(self.pos, self.pieces.len(), to)?;
        Ok(self.pos)
    }
}

/// openraft's `SnapshotData`.
#[derive(Debug)]
pub enum SnapshotData {
    /// A plain file, read and written (a snapshot being received).
    File(tokio::fs::File),
    /// A stored snapshot's pieces, read only; reads run on blocking threads.
    Pieces(AsyncPieces),
}

impl SnapshotData {
    pub fn pieces(pieces: Pieces) -> SnapshotData {
        SnapshotData::Pieces(AsyncPieces {
            pieces: Arc::new(pieces),
            pos: 0,
            pending: None,
            buffered: Vec::new(),
            buffered_at: 0,
        })
    }
}

/// The async side of [`Pieces`]: each read is a blocking task reading at the current position;
/// what the caller's buffer could not take is kept for the next read at that position.
#[derive(Debug)]
pub struct AsyncPieces {
    pieces: Arc<Pieces>,
    pos: u64,
    /// A read in flight, started at `buffered_at`.
    pending: Option<JoinHandle<io::Result<Vec<u8>>>>,
    buffered: Vec<u8>,
    buffered_at: u64,
}

impl AsyncPieces {
    fn poll_read(&mut self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.buffered.is_empty() && self.buffered_at == self.pos {
                let n = self.buffered.len().min(buf.remaining());
                buf.put_slice(&self.buffered[..n]);
                self.buffered.drain(..n);
                self.pos += n as u64;
                self.buffered_at = self.pos;
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if self.pending.is_none() {
                let (pieces, at) = (self.pieces.clone(), self.pos);
                let want = buf.remaining().min(PIECES_READ_BYTES_MAX);
                self.buffered_at = at;
                self.pending = Some(tokio::task::spawn_blocking(move || {
                    let mut out = vec![0u8; want];
                    let n = pieces.read_at(at, &mut out)?;
                    out.truncate(n);
                    Ok(out)
                }));
            }
            let Some(handle) = self.pending.as_mut() else { unreachable!("set above") };
            let done = ready!(Pin::new(handle).poll(cx));
            self.pending = None;
            let bytes = done.map_err(|e| io::Error::other(format!("snapshot read task: {e}")))??;
            if bytes.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.buffered = bytes;
        }
    }

    fn start_seek(&mut self, to: SeekFrom) -> io::Result<()> {
        let len = self.pieces.len();
        self.pos = seek_to(self.pos, len, to)?;
        // A read in flight for another position is of no use any more.
        if self.buffered_at != self.pos {
            self.pending = None;
            self.buffered.clear();
        }
        Ok(())
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File(f) => Pin::new(f).poll_read(cx, buf),
            SnapshotData::Pieces(p) => p.poll_read(cx, buf),
        }
    }
}

impl AsyncSeek for SnapshotData {
    fn start_seek(self: Pin<&mut Self>, to: SeekFrom) -> io::Result<()> {
        match self.get_mut() {
            SnapshotData::File(f) => Pin::new(f).start_seek(to),
            SnapshotData::Pieces(p) => p.start_seek(to),
        }
    }

    fn poll_complete(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        match self.get_mut() {
            SnapshotData::File(f) => Pin::new(f).poll_complete(cx),
            SnapshotData::Pieces(p) => Poll::Ready(Ok(p.pos)),
        }
    }
}

fn read_only() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "a stored snapshot is read only")
}

impl AsyncWrite for SnapshotData {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SnapshotData::File(f) => Pin::new(f).poll_write(cx, buf),
            SnapshotData::Pieces(_) => Poll::Ready(Err(read_only())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File(f) => Pin::new(f).poll_flush(cx),
            SnapshotData::Pieces(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SnapshotData::File(f) => Pin::new(f).poll_shutdown(cx),
            SnapshotData::Pieces(_) => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt};

    fn sample(dir: &std::path::Path) -> (Vec<Piece>, Vec<u8>) {
        let mut whole = Vec::new();
        let mut pieces = Vec::new();
        for i in 0..5u32 {
            let bytes: Vec<u8> = (0..(1000 + i * 777)).map(|b| (b * 31 + i) as u8).collect();
            if i % 2 == 0 {
                let path = dir.join(format!("f{i}"));
                // The file is longer than its piece: only `len` bytes belong to the stream.
                std::fs::write(&path, [bytes.as_slice(), b"trailing"].concat()).unwrap();
                pieces.push(Piece::File { path, len: bytes.len() as u64 });
            } else {
                pieces.push(Piece::Bytes(bytes.clone()));
            }
            whole.extend_from_slice(&bytes);
        }
        (pieces, whole)
    }

    #[test]
    fn pieces_read_as_one_stream_from_any_position() {
        let dir = tempfile::tempdir().unwrap();
        let (pieces, whole) = sample(dir.path());
        let mut r = Pieces::open(pieces).unwrap().reader();
        let mut all = Vec::new();
        r.read_to_end(&mut all).unwrap();
        assert_eq!(all, whole);
        for pos in [0u64, 1, 999, 1000, 1001, 4000, whole.len() as u64 - 1] {
            r.seek(SeekFrom::Start(pos)).unwrap();
            let mut rest = Vec::new();
            r.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, whole[pos as usize..], "from {pos}");
        }
        assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), whole.len() as u64);
        assert!(r.seek(SeekFrom::Current(-(whole.len() as i64) - 1)).is_err());
    }

    #[test]
    fn files_unlinked_after_opening_are_still_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (pieces, whole) = sample(dir.path());
        let mut r = Pieces::open(pieces).unwrap().reader();
        let mut first = vec![0u8; 10];
        r.read_exact(&mut first).unwrap();
        // A newer snapshot replaced this one: its files go.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            std::fs::remove_file(e.unwrap().path()).unwrap();
        }
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        assert_eq!([first, rest].concat(), whole);
    }

    #[test]
    fn a_file_shorter_than_its_piece_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("short");
        std::fs::write(&path, b"abc").unwrap();
        let mut r = Pieces::open(vec![Piece::File { path, len: 10 }]).unwrap().reader();
        let err = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn the_async_reader_matches_and_refuses_writes() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().unwrap();
        let (pieces, whole) = sample(dir.path());
        let mut data = SnapshotData::pieces(Pieces::open(pieces).unwrap());
        assert_eq!(data.seek(SeekFrom::End(0)).await.unwrap(), whole.len() as u64);
        // openraft's way: seek to an offset, then read a chunk in several reads.
        for (offset, chunk) in [(0usize, 1500usize), (1500, 4096), (2000, 100), (5596, 100_000)] {
            data.seek(SeekFrom::Start(offset as u64)).await.unwrap();
            let mut buf = Vec::with_capacity(chunk);
            while buf.len() < chunk {
                let mut small = vec![0u8; 333.min(chunk - buf.len())];
                let n = data.read(&mut small).await.unwrap();
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&small[..n]);
            }
            let end = (offset + chunk).min(whole.len());
            assert_eq!(buf, whole[offset..end], "chunk at {offset}");
        }
        assert_eq!(data.write(b"x").await.unwrap_err().kind(), io::ErrorKind::Unsupported);
    }
}
