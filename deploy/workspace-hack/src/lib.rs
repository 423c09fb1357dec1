//! Empty on purpose: this package exists for its dependency list (see Cargo.toml), which
//! `cargo hakari generate` keeps so that every build of any workspace package resolves each
//! dependency with one feature set (issue 16).
