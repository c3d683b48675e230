//! The `svcnat` command.
fn main() {}
