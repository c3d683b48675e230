//! `BPF_PROG_TEST_RUN`: run a loaded program on a packet without any traffic.
//!
//! aya 0.14 has no public call for it, so this is a small wrapper over the
//! `bpf(2)` system call. The kernel runs the program `repeat` times on a copy
//! of the input (for TC programs: an skb on the loopback device of the
//! caller's network namespace) and returns the program's return value, the
//! packet as the program left it, and the mean run time.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

/// `BPF_PROG_TEST_RUN` (alias `BPF_PROG_RUN`) command of `bpf(2)`.
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// Size of `struct __sk_buff` in the uapi (`linux/bpf.h`).
pub const SK_BUFF_CTX_SIZE: usize = 192;

/// What one test run returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (for TC: `TC_ACT_*`; for XDP: `XDP_*`).
    pub retval: u32,
    /// The packet after the program ran.
    pub data_out: Vec<u8>,
    /// Mean duration of one run, in nanoseconds, as the kernel measured it.
    pub duration_ns: u32,
}

/// The `test` member of `union bpf_attr`, zero-padded to the size of the union.
///
/// The kernel copies `min(size, sizeof(union bpf_attr))` bytes and requires
/// that any bytes past its own union size are zero; passing the union size of
/// the uapi headers works on older and newer kernels alike.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad0: u32,
    /// Rest of `union bpf_attr` (144 bytes in the uapi headers).
    tail: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<TestRunAttr>() == 144);

/// Runs the program `prog_fd` on `data_in` (a whole Ethernet frame for TC and
/// XDP programs) `repeat` times (0 counts as 1).
///
/// Returns the program's return value, the output packet and the mean
/// duration per run. Errors are the `bpf(2)` error: `EINVAL` for a frame
/// shorter than an Ethernet header, `EPERM` without `CAP_BPF`/`CAP_SYS_ADMIN`.
pub fn test_run(prog_fd: BorrowedFd<'_>, data_in: &[u8], repeat: u32) -> io::Result<TestRunOutput> {
    run(prog_fd, data_in, None, repeat)
}

/// Like [`test_run`], with a context for the program: for TC programs a
/// `struct __sk_buff` (see [`sk_buff_ctx`]), of which the kernel accepts only
/// a few fields (`mark`, `priority`, `ingress_ifindex`, `ifindex`, `cb`,
/// `tstamp`, `wire_len`, `gso_segs`, `gso_size`, `hwtstamp`); the rest must be 0.
pub fn test_run_with_ctx(
    prog_fd: BorrowedFd<'_>,
    data_in: &[u8],
    ctx_in: &[u8],
    repeat: u32,
) -> io::Result<TestRunOutput> {
    run(prog_fd, data_in, Some(ctx_in), repeat)
}

/// A `struct __sk_buff` context with `ifindex` and `ingress_ifindex` set
/// (an `ifindex` above 1 must name a device of the caller's network namespace).
pub fn sk_buff_ctx(ifindex: u32, ingress_ifindex: u32) -> [u8; SK_BUFF_CTX_SIZE] {
    let mut ctx = [0u8; SK_BUFF_CTX_SIZE];
    // Offsets of `ingress_ifindex` and `ifindex` in `struct __sk_buff`.
    ctx[36..40].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx
}

fn run(
    prog_fd: BorrowedFd<'_>,
    data_in: &[u8],
    ctx_in: Option<&[u8]>,
    repeat: u32,
) -> io::Result<TestRunOutput> {
    let size_in = u32::try_from(data_in.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "packet too large"))?;
    // Programs may grow the packet (encapsulation, replies built in place).
    let mut data_out = vec![0u8; data_in.len() + 256];
    for _ in 0..2 {
        let mut attr = TestRunAttr {
            prog_fd: u32::try_from(prog_fd.as_raw_fd())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "negative fd"))?,
            data_size_in: size_in,
            data_size_out: u32::try_from(data_out.len()).unwrap_or(u32::MAX),
            data_in: data_in.as_ptr() as u64,
            data_out: data_out.as_mut_ptr() as u64,
            repeat,
            ..TestRunAttr::default()
        };
        if let Some(ctx) = ctx_in {
            attr.ctx_size_in = u32::try_from(ctx.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "context too large"))?;
            attr.ctx_in = ctx.as_ptr() as u64;
        }
        // SAFETY: `attr` is a valid `bpf_attr` test member that lives across
        // the call; `data_in`/`ctx_in` are readable for their sizes and
        // `data_out` is writable for `data_size_out` bytes. The kernel writes
        // back only into `attr` and `data_out`.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_TEST_RUN,
                &mut attr as *mut TestRunAttr,
                std::mem::size_of::<TestRunAttr>(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            // ENOSPC: the output was larger than our buffer; the kernel said how large.
            if err.raw_os_error() == Some(libc::ENOSPC)
                && attr.data_size_out as usize > data_out.len()
            {
                data_out = vec![0u8; attr.data_size_out as usize];
                continue;
            }
            return Err(err);
        }
        data_out.truncate(attr.data_size_out as usize);
        return Ok(TestRunOutput {
            retval: attr.retval,
            data_out,
            duration_ns: attr.duration,
        });
    }
    Err(io::Error::other("BPF_PROG_TEST_RUN output kept growing"))
}

#[cfg(test)]
mod tests {
    use std::os::fd::{AsFd, FromRawFd, OwnedFd};

    use super::*;

    /// Loads `r0 = retval; exit` as a TC (sched_cls) program with a raw
    /// `BPF_PROG_LOAD`, so the wrapper is tested without the svcnat object.
    fn load_return(retval: i32) -> io::Result<OwnedFd> {
        #[repr(C)]
        #[derive(Default)]
        struct ProgLoadAttr {
            prog_type: u32,
            insn_cnt: u32,
            insns: u64,
            license: u64,
            log_level: u32,
            log_size: u32,
            log_buf: u64,
            kern_version: u32,
            prog_flags: u32,
            tail: [u64; 14],
        }
        // BPF_MOV64_IMM(BPF_REG_0, retval); BPF_EXIT_INSN()
        let mut insns = [0u64; 2];
        insns[0] = 0xb7 | (u64::from(retval as u32) << 32);
        insns[1] = 0x95;
        let license = c"GPL";
        let mut attr = ProgLoadAttr {
            prog_type: 3, // BPF_PROG_TYPE_SCHED_CLS
            insn_cnt: 2,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            ..ProgLoadAttr::default()
        };
        // SAFETY: a valid BPF_PROG_LOAD attr (cmd 5); the pointers outlive the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                5,
                &mut attr as *mut ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel returned a new fd that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    #[test]
    fn runs_a_program_and_returns_its_verdict_and_packet() {
        crate::skip_unless!(crate::skip::Needs::root());
        let fd = load_return(7).expect("BPF_PROG_LOAD of a two-instruction program");
        let frame: Vec<u8> = (0u8..60).collect();
        let out = test_run(fd.as_fd(), &frame, 1).expect("test run");
        assert_eq!(out.retval, 7);
        assert_eq!(out.data_out, frame, "the program does not touch the packet");

        let out = test_run(fd.as_fd(), &frame, 100).expect("repeated test run");
        assert_eq!(out.retval, 7);

        let ctx = sk_buff_ctx(0, 0);
        let out = test_run_with_ctx(fd.as_fd(), &frame, &ctx, 1).expect("run with a context");
        assert_eq!(out.retval, 7);

        let err = test_run(fd.as_fd(), &frame[..10], 1).expect_err("shorter than Ethernet");
        assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    }
}
