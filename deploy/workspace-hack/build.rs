//! A build script, so that cargo also unifies the features of build dependencies through
//! this package (cargo-hakari needs one).
fn main() {}
