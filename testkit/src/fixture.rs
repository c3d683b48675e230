//! The runner of packet fixture tables (Katran's shape): a table of cases,
//! each {description, seeded maps, steps of {program, input frame, expected
//! verdict, expected output, expected stats reason, map effects}}, run
//! through `BPF_PROG_TEST_RUN` on a fresh [`TestDatapath`] per case.
//!
//! The tables live in the test files (`tests/fixtures.rs` and
//! `tests/fixtures6.rs` for the pod programs, `tests/fixtures_node.rs` and
//! `tests/fixtures_node6.rs` for the node programs); this module
//! only gives their shape ([`Case`], [`Step`], [`Expect`]) and runs them
//! ([`run_table`]). A step's input and output check may depend on the
//! previous step's output (say a SNAT port the datapath chose at random).
//!
//! Every step checks, besides what it expects: that exactly one stats
//! counter moved, by one packet of the input's length; and that a frame
//! the program passed on or sent back, when the step expects a changed one,
//! carries valid checksums. `SVCNAT_FIXTURE=substring` runs only the cases
//! whose description contains it.

use proxy_common::{Reason, StatValue};

use crate::{
    datapath::{
        Flow, Flow6, TC_ACT_REDIRECT, TC_ACT_SHOT, TCX_NEXT, TcProgram, TestDatapath, XDP_DROP,
        XDP_PASS, XDP_TX, monotonic_ns,
    },
    packet::{checksums_ok, parse},
};

/// Monotonic clock readings just before and after a step ran.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    /// Before the run.
    pub before: u64,
    /// After the run.
    pub after: u64,
}

impl Window {
    /// Whether `t` lies in the window (ends included).
    pub fn contains(&self, t: u64) -> bool {
        self.before <= t && t <= self.after
    }
}

/// Seeds a case's maps.
pub type Seed = Box<dyn Fn(&mut TestDatapath) -> Result<(), String>>;
/// Checks a step's output given the previous step's output (empty for the
/// first step).
pub type FrameCheck = Box<dyn Fn(&[u8], &[u8]) -> Result<(), String>>;
/// Checks the maps after a step: the datapath, the step's [`Window`] and its
/// output.
pub type Effect = Box<dyn Fn(&TestDatapath, Window, &[u8]) -> Result<(), String>>;
/// Makes a step's input from the previous step's output.
pub type MakeInput = Box<dyn Fn(&[u8]) -> Result<Vec<u8>, String>>;

/// What a step's output must be.
pub enum Expect {
    /// Output equals input.
    Unchanged,
    /// Output equals these bytes.
    Frame(Vec<u8>),
    /// Output passes this check (generated packets).
    Check(FrameCheck),
    /// Dropped: the contents do not matter.
    Any,
}

/// One run of one program.
pub struct Step {
    /// The program.
    pub prog: TcProgram,
    /// Its input.
    pub input: MakeInput,
    /// The verdict it must return.
    pub verdict: u32,
    /// What its output must be.
    pub output: Expect,
    /// The one stats reason it must count.
    pub reason: Reason,
    /// Checks of the maps afterwards.
    pub effects: Vec<Effect>,
}

impl Step {
    /// `prog` on `input`; what it must do is set by the other methods.
    pub fn on(prog: TcProgram, input: Vec<u8>) -> Self {
        Self {
            prog,
            input: Box::new(move |_| Ok(input.clone())),
            verdict: u32::MAX,
            output: Expect::Any,
            reason: Reason::PassNotIp,
            effects: Vec::new(),
        }
    }

    /// `prog` on an input made from the previous step's output.
    pub fn after(
        prog: TcProgram,
        input: impl Fn(&[u8]) -> Result<Vec<u8>, String> + 'static,
    ) -> Self {
        Self {
            input: Box::new(input),
            ..Self::on(prog, Vec::new())
        }
    }

    /// Expects `verdict`, `output` and one count of `reason`.
    pub fn expect(mut self, verdict: u32, output: Expect, reason: Reason) -> Self {
        self.verdict = verdict;
        self.output = output;
        self.reason = reason;
        self
    }

    /// The program's verdict for a packet it passes on: `XDP_PASS` for XDP,
    /// `TCX_NEXT` for TC.
    pub fn pass_verdict(&self) -> u32 {
        if self.prog == TcProgram::NodeXdp {
            XDP_PASS
        } else {
            TCX_NEXT
        }
    }

    /// The program's verdict for a packet it drops: `XDP_DROP` for XDP,
    /// `TC_ACT_SHOT` for TC.
    pub fn drop_verdict(&self) -> u32 {
        if self.prog == TcProgram::NodeXdp {
            XDP_DROP
        } else {
            TC_ACT_SHOT
        }
    }

    /// Passed on, output == input.
    pub fn untouched(self, reason: Reason) -> Self {
        let v = self.pass_verdict();
        self.expect(v, Expect::Unchanged, reason)
    }

    /// Passed on as exactly this frame.
    pub fn passed(self, frame: Vec<u8>, reason: Reason) -> Self {
        let v = self.pass_verdict();
        self.expect(v, Expect::Frame(frame), reason)
    }

    /// Passed on, the output passing `check` (given the previous output
    /// and this one).
    pub fn checked(
        self,
        reason: Reason,
        check: impl Fn(&[u8], &[u8]) -> Result<(), String> + 'static,
    ) -> Self {
        let v = self.pass_verdict();
        self.expect(v, Expect::Check(Box::new(check)), reason)
    }

    /// Dropped.
    pub fn dropped(self, reason: Reason) -> Self {
        let v = self.drop_verdict();
        self.expect(v, Expect::Any, reason)
    }

    /// Answered with exactly this reply (`TC_ACT_REDIRECT`).
    pub fn answered(self, frame: Vec<u8>, reason: Reason) -> Self {
        self.expect(TC_ACT_REDIRECT, Expect::Frame(frame), reason)
    }

    /// Sent back out of the interface it came in on (`TC_ACT_REDIRECT`),
    /// the output passing `check`.
    pub fn bounced(
        self,
        reason: Reason,
        check: impl Fn(&[u8], &[u8]) -> Result<(), String> + 'static,
    ) -> Self {
        self.expect(TC_ACT_REDIRECT, Expect::Check(Box::new(check)), reason)
    }

    /// Checks the maps afterwards with `f` as well.
    pub fn effect(
        mut self,
        f: impl Fn(&TestDatapath, Window, &[u8]) -> Result<(), String> + 'static,
    ) -> Self {
        self.effects.push(Box::new(f));
        self
    }
}

/// One case of a table: its description, what it seeds (on top of the
/// table's world) and its steps, run in order.
pub struct Case {
    /// What the case shows.
    pub name: &'static str,
    /// Its own seed.
    pub seed: Seed,
    /// Its steps.
    pub steps: Vec<Step>,
}

/// A case named `name` that seeds nothing of its own and has no steps yet.
pub fn case(name: &'static str) -> Case {
    Case {
        name,
        seed: Box::new(|_| Ok(())),
        steps: Vec::new(),
    }
}

impl Case {
    /// Seeds with `f` (instead of the seed so far).
    pub fn seed(mut self, f: impl Fn(&mut TestDatapath) -> Result<(), String> + 'static) -> Self {
        self.seed = Box::new(f);
        self
    }

    /// Seeds both conntrack entries of each of `flows`.
    pub fn flows(self, flows: Vec<Flow>) -> Self {
        self.seed(move |dp| {
            for f in &flows {
                dp.add_flow(f)
                    .map_err(|e| format!("seed flow {f:?}: {e}"))?;
            }
            Ok(())
        })
    }

    /// Seeds both conntrack entries of each of the IPv6 `flows`.
    pub fn flows6(self, flows: Vec<Flow6>) -> Self {
        self.seed(move |dp| {
            for f in &flows {
                dp.add_flow6(f)
                    .map_err(|e| format!("seed flow {f:?}: {e}"))?;
            }
            Ok(())
        })
    }

    /// Adds a step.
    pub fn step(mut self, s: Step) -> Self {
        self.steps.push(s);
        self
    }
}

/// Runs every case of `table` (those matching `SVCNAT_FIXTURE`, when set),
/// each on a fresh datapath seeded with `world` and then its own seed,
/// printing `ok` or `FAIL` per case; panics naming the failed ones.
pub fn run_table(table: &[Case], world: impl Fn(&mut TestDatapath) -> Result<(), String>) {
    run_table_with(
        table,
        || TestDatapath::load().map_err(|e| format!("load: {e}")),
        world,
    );
}

/// [`run_table`], each case on a datapath that `load` gives (for example
/// one with other map sizes, or whose maps are pinned).
pub fn run_table_with(
    table: &[Case],
    load: impl Fn() -> Result<TestDatapath, String>,
    world: impl Fn(&mut TestDatapath) -> Result<(), String>,
) {
    let filter = std::env::var("SVCNAT_FIXTURE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for c in table {
        if filter
            .as_ref()
            .is_some_and(|f| !c.name.contains(f.as_str()))
        {
            continue;
        }
        ran += 1;
        match run_case_with(c, &load, &world) {
            Ok(()) => eprintln!("ok   {}", c.name),
            Err(e) => {
                eprintln!("FAIL {}\n  {e}", c.name);
                failures.push(c.name);
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {ran} fixtures failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Runs case `c` on a fresh datapath seeded with `world`, then its own seed.
pub fn run_case(
    c: &Case,
    world: impl Fn(&mut TestDatapath) -> Result<(), String>,
) -> Result<(), String> {
    run_case_with(
        c,
        || TestDatapath::load().map_err(|e| format!("load: {e}")),
        world,
    )
}

/// [`run_case`] on the datapath `load` gives.
pub fn run_case_with(
    c: &Case,
    load: impl Fn() -> Result<TestDatapath, String>,
    world: impl Fn(&mut TestDatapath) -> Result<(), String>,
) -> Result<(), String> {
    let mut dp = load()?;
    world(&mut dp)?;
    (c.seed)(&mut dp).map_err(|e| format!("seed: {e}"))?;
    let mut prev = Vec::new();
    for (i, step) in c.steps.iter().enumerate() {
        let input = (step.input)(&prev)
            .map_err(|e| format!("step {} ({:?}): input: {e}", i + 1, step.prog))?;
        prev = run_step(&dp, step, &prev, &input).map_err(|e| {
            format!(
                "step {} ({:?}, input {}):\n    {e}",
                i + 1,
                step.prog,
                describe(&input)
            )
        })?;
    }
    Ok(())
}

/// Runs `step` on `input` after a step whose output was `prev`; returns
/// its output, or every way it differs from what the step expects.
fn run_step(dp: &TestDatapath, step: &Step, prev: &[u8], input: &[u8]) -> Result<Vec<u8>, String> {
    let before = dp.all_stats().map_err(|e| format!("read stats: {e}"))?;
    let t0 = monotonic_ns();
    let out = dp
        .run(step.prog, input)
        .map_err(|e| format!("BPF_PROG_TEST_RUN: {e}"))?;
    let window = Window {
        before: t0,
        after: monotonic_ns(),
    };
    let after = dp.all_stats().map_err(|e| format!("read stats: {e}"))?;

    let mut errors = Vec::new();
    if out.retval != step.verdict {
        errors.push(format!(
            "verdict {} ({}), want {} ({})",
            out.retval,
            verdict_name(step.prog, out.retval),
            step.verdict,
            verdict_name(step.prog, step.verdict)
        ));
    }
    match &step.output {
        Expect::Unchanged if out.data_out != input => {
            errors.push(frame_diff(&out.data_out, input));
        }
        Expect::Frame(want) if &out.data_out != want => {
            errors.push(frame_diff(&out.data_out, want));
        }
        Expect::Check(check) => {
            if let Err(e) = check(prev, &out.data_out) {
                errors.push(format!("output: {e}; got {}", describe(&out.data_out)));
            }
        }
        _ => {}
    }
    // Whatever the program passes on or sends back changed must carry
    // valid checksums.
    if out.retval != step.drop_verdict()
        && matches!(step.output, Expect::Frame(_) | Expect::Check(_))
        && let Err(e) = checksums_ok(&out.data_out)
    {
        errors.push(format!("output checksums: {e}"));
    }
    let delta = stats_delta(&before, &after);
    let want = vec![(step.reason, 1, input.len() as u64)];
    if delta != want {
        errors.push(format!(
            "stats changed by {delta:?} (reason, packets, bytes), want {want:?}"
        ));
    }
    for effect in &step.effects {
        if let Err(e) = effect(dp, window, &out.data_out) {
            errors.push(format!("map effect: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(out.data_out)
    } else {
        Err(errors.join("\n    "))
    }
}

/// `b` as hex digits.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A one-line account of `frame`: its addresses and headers.
pub fn describe(frame: &[u8]) -> String {
    match parse(frame) {
        Ok(p) => match (&p.ipv4, &p.ipv6) {
            (Some(ip), _) => format!(
                "{} -> {} proto {} len {} ttl {} id {:#06x} frag {:#06x} l4 {:?}",
                ip.src, ip.dst, ip.proto, ip.total_len, ip.ttl, ip.id, ip.flags_frag, ip.l4
            ),
            (None, Some(ip)) => format!(
                "{} -> {} ext {:?} proto {} plen {} hops {} frag {:?} l4 {:?}",
                ip.src,
                ip.dst,
                ip.ext_kinds(),
                ip.proto,
                ip.payload_len,
                ip.hop_limit,
                ip.fragment(),
                ip.l4
            ),
            (None, None) => format!("ethertype {:#06x}, {} bytes", p.ethertype, frame.len()),
        },
        Err(e) => format!("unparsable ({e}), {} bytes", frame.len()),
    }
}

fn frame_diff(got: &[u8], want: &[u8]) -> String {
    let first = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    format!(
        "output differs (lengths {} vs {}, first difference at byte {first}):\n      got  {}\n      want {}\n      got  {}\n      want {}",
        got.len(),
        want.len(),
        describe(got),
        describe(want),
        hex(got),
        hex(want)
    )
}

fn verdict_name(prog: TcProgram, v: u32) -> &'static str {
    match (prog, v) {
        (TcProgram::NodeXdp, XDP_DROP) => "XDP_DROP",
        (TcProgram::NodeXdp, XDP_PASS) => "XDP_PASS",
        (TcProgram::NodeXdp, XDP_TX) => "XDP_TX",
        (TcProgram::NodeXdp, _) => "?",
        (_, TCX_NEXT) => "TCX_NEXT",
        (_, TC_ACT_SHOT) => "TC_ACT_SHOT",
        (_, TC_ACT_REDIRECT) => "TC_ACT_REDIRECT",
        _ => "?",
    }
}

fn stats_delta(
    before: &[(Reason, StatValue)],
    after: &[(Reason, StatValue)],
) -> Vec<(Reason, u64, u64)> {
    before
        .iter()
        .zip(after)
        .filter(|((_, b), (_, a))| a != b)
        .map(|((r, b), (_, a))| {
            (
                *r,
                a.packets.wrapping_sub(b.packets),
                a.bytes.wrapping_sub(b.bytes),
            )
        })
        .collect()
}
