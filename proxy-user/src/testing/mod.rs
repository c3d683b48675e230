//! Test support shared by the packet tests and `cargo xtask bench`: a packet
//! builder and parser, a `BPF_PROG_TEST_RUN` wrapper, and the datapath loaded
//! with private maps.

pub mod datapath;
pub mod packet;
pub mod prog_run;
