//! The packet generator of one family ([`Side`]): random, mutated,
//! truncated and fragmented frames, packets to the seeded frontends and of
//! the seeded flows, and answers to what the programs let through.

use super::*;

/// A packet and where it goes.
#[derive(Clone)]
pub struct Packet {
    pub prog: TcProgram,
    pub frame: Vec<u8>,
    pub kind: &'static str,
}

/// What one family's packets are made of: its random stream, what its
/// world allows, this round's seeded flows and the packets to answer.
pub struct Side<F: Family> {
    pub rng: StdRng,
    pub allowed: Allowed<F::Addr>,
    /// Seeded flows of this round: service keys and SNAT keys they own.
    pub seeded_snat_keys: BTreeSet<Tuple<F::Addr>>,
    /// Ports of seeded flows (client ports, SNAT ports), for bias.
    pub flow_ports: Vec<u16>,
    /// This round's seeded flows.
    pub flows: Vec<SeededFlow<F::Sock>>,
    /// Translated outputs, to answer.
    pub recent: VecDeque<Packet>,
    /// Packets to send next (later fragments).
    pub pending: VecDeque<Packet>,
    /// The program of the packet being made.
    pub prog: TcProgram,
    /// The truncation sweep, sent first.
    pub sweep: VecDeque<Packet>,
    /// Packets of this family made so far.
    pub made: u64,
}

impl<F: Family> Side<F> {
    pub fn new(seed: u64) -> Self {
        let mut s = Side {
            rng: StdRng::seed_from_u64(seed),
            allowed: Allowed::new::<F>(),
            seeded_snat_keys: BTreeSet::new(),
            flow_ports: Vec::new(),
            flows: Vec::new(),
            recent: VecDeque::new(),
            pending: VecDeque::new(),
            prog: TcProgram::PodIngress,
            sweep: VecDeque::new(),
            made: 0,
        };
        s.sweep = s.sweep().into();
        s
    }

    /// Seeds this round's flows (the state maps were just cleared).
    pub fn new_round(&mut self, dp: &mut TestDatapath) -> Result<(), String> {
        self.recent.clear();
        self.pending.clear();
        self.seeded_snat_keys.clear();
        self.flow_ports.clear();
        self.flows.clear();
        let now = monotonic_ns();
        let live = (now.saturating_sub(NS), now + 3600 * NS);
        let port = |rng: &mut StdRng| rng.random_range(1024..=60999u16);
        let flows = [
            (Host::PodA, WEB, B1, IPPROTO_TCP, CT_F_SEEN_NON_SYN, live.1),
            (Host::PodB, DNS, B3, IPPROTO_UDP, 0, live.1),
            (Host::PodB, WEB, B2, IPPROTO_TCP, CT_F_CLOSED, live.1),
            (Host::PodA, AFF, B2, IPPROTO_TCP, CT_F_SEEN_NON_SYN, 1),
            (
                Host::Outside,
                NP_LOCAL,
                L1,
                IPPROTO_TCP,
                CT_F_SEEN_NON_SYN,
                live.1,
            ),
            (Host::Outside, EXT_UDP, L3, IPPROTO_UDP, 0, live.1),
        ];
        for (client, vip, b, proto, flags, expires_ns) in flows {
            let cport = port(&mut self.rng);
            self.flow_ports.push(cport);
            let client = F::sock(F::host(client), cport);
            let flow = flow::<F>(client, vip, b, proto, flags, live.0, expires_ns);
            F::seed_flow(dp, &flow)?;
            self.flows.push(flow);
        }
        let snat_flows = [
            (Host::Outside, NP_REMOTE, R1, IPPROTO_TCP, Host::Node),
            (Host::Outside, NP_UDP, R2, IPPROTO_UDP, Host::Node),
            (Host::Stranger, EXT_UDP, R2, IPPROTO_UDP, Host::Node),
            // A pod reaching itself through WEB (hairpin).
            (Host::B1, WEB, B1, IPPROTO_TCP, Host::Hairpin),
        ];
        for (client, vip, b, proto, via) in snat_flows {
            let cport = port(&mut self.rng);
            let sport = self.rng.random_range(SNAT_PORT_MIN..=SNAT_PORT_MAX);
            self.flow_ports.extend([cport, sport]);
            let client = F::sock(F::host(client), cport);
            let flow = flow::<F>(client, vip, b, proto, CT_F_SEEN_NON_SYN, live.0, live.1);
            let via = F::sock(F::host(via), sport);
            let flow = SeededFlow {
                via: Some(via),
                ..flow
            };
            F::seed_flow(dp, &flow).map_err(|e| format!("SNAT {e}"))?;
            self.seeded_snat_keys.insert(Tuple {
                saddr: F::ip(flow.client),
                daddr: F::ip(flow.vip),
                sport: F::port(flow.client),
                dport: F::port(flow.vip),
                proto,
                dir: CT_DIR_SERVICE,
            });
            self.seeded_snat_keys.insert(Tuple {
                saddr: F::ip(flow.backend),
                daddr: F::ip(via),
                sport: F::port(flow.backend),
                dport: F::port(via),
                proto,
                dir: CT_DIR_REPLY,
            });
            self.flows.push(flow);
        }
        Ok(())
    }

    // -- generation ---------------------------------------------------------

    fn addr(&mut self) -> F::Addr {
        match self.rng.random_range(0..10) {
            0..=7 => {
                let h = pick(&mut self.rng, INTERESTING);
                // The hairpin address is link-local: keep it, it is what the
                // datapath writes, but only in a few packets.
                if h == Host::Hairpin && self.rng.random_bool(0.5) {
                    F::host(Host::PodA)
                } else {
                    F::host(h)
                }
            }
            _ => F::random_addr(&mut self.rng),
        }
    }

    fn port(&mut self) -> u16 {
        match self.rng.random_range(0..10) {
            0..=4 => pick(&mut self.rng, PORTS),
            5..=6 if !self.flow_ports.is_empty() => {
                let ports = self.flow_ports.clone();
                pick(&mut self.rng, &ports)
            }
            7 => self.rng.random_range(SNAT_PORT_MIN..=SNAT_PORT_MAX),
            _ => self.rng.random(),
        }
    }

    fn endpoint(&mut self) -> F::Sock {
        F::sock(self.addr(), self.port())
    }

    fn payload(&mut self, max: usize) -> Vec<u8> {
        let n = self.rng.random_range(0..=max);
        random_bytes(&mut self.rng, n)
    }

    /// Random IP header fields on a builder.
    fn ip_fields(&mut self, b: P<F>) -> P<F> {
        F::header_fields(&mut self.rng, b)
    }

    fn tcp_flags(&mut self) -> u8 {
        match self.rng.random_range(0..10) {
            0..=2 => TCP_SYN,
            3..=4 => TCP_ACK,
            5 => TCP_ACK | TCP_PSH,
            6 => TCP_FIN | TCP_ACK,
            7 => TCP_RST,
            8 => TCP_SYN | TCP_ACK,
            _ => self.rng.random(),
        }
    }

    fn tcp(&mut self, src: F::Sock, dst: F::Sock) -> P<F> {
        let mut b = P::<F>::tcp(src, dst)
            .flags(self.tcp_flags())
            .seq(self.rng.random())
            .ack_seq(self.rng.random())
            .window(self.rng.random());
        if self.rng.random_ratio(1, 10) {
            let n = 4 * self.rng.random_range(1..=10);
            b = b.tcp_options(&random_bytes(&mut self.rng, n));
        }
        if self.rng.random_ratio(1, 25) {
            b = b.tcp_data_offset(self.rng.random_range(0..=15));
        }
        if self.rng.random_ratio(1, 25) {
            b = b.l4_checksum(self.rng.random());
        }
        let payload = self.payload(64);
        self.ip_fields(b.payload(&payload))
    }

    fn udp(&mut self, src: F::Sock, dst: F::Sock) -> P<F> {
        let payload = self.payload(64);
        let mut b = P::<F>::udp(src, dst).payload(&payload);
        match self.rng.random_range(0..20) {
            0..=2 => b = b.udp_zero_checksum(),
            3 => b = b.l4_checksum(self.rng.random()),
            _ => {}
        }
        self.ip_fields(b)
    }

    fn tcp_or_udp(&mut self, src: F::Sock, dst: F::Sock) -> P<F> {
        if self.rng.random_bool(0.5) {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        }
    }

    fn icmp_error(&mut self, inner: &P<F>, src: F::Addr, dst: F::Addr) -> Vec<u8> {
        let (ty, code) = self.icmp_error_type();
        let b = if self.rng.random_ratio(1, 4) {
            // A header and 8 bytes, whatever the family quotes by default.
            let quoted = inner.ip_bytes();
            let n = quoted.len().min(inner.ip_header_len() + 8);
            P::<F>::icmp(src, dst, ty, code).payload(&quoted[..n])
        } else {
            P::<F>::icmp_error(src, dst, ty, code, inner)
        };
        let b = b.icmp_rest(self.rng.random());
        let mut frame = self.ip_fields(b).build();
        // Quote more, or less.
        match self.rng.random_range(0..8) {
            0 => {
                let cut = self
                    .rng
                    .random_range((ETH_HLEN + F::IP_HLEN).min(frame.len())..=frame.len());
                frame.truncate(cut);
            }
            1 => {
                let extra = self.payload(32);
                frame.extend_from_slice(&extra);
            }
            _ => {}
        }
        frame
    }

    /// A random ICMP error type and code.
    fn icmp_error_type(&mut self) -> (u8, u8) {
        let (unreach, codes) = F::DEST_UNREACH;
        match self.rng.random_range(0..6) {
            0..=2 => (unreach, self.rng.random_range(0..codes)),
            3 => (F::TIME_EXCEEDED, self.rng.random_range(0..2)),
            4 => (pick(&mut self.rng, F::OTHER_ERRORS), self.rng.random()),
            _ => (self.rng.random(), self.rng.random()),
        }
    }

    fn program(&mut self) -> TcProgram {
        pick(
            &mut self.rng,
            &[
                TcProgram::PodIngress,
                TcProgram::PodEgress,
                TcProgram::NodeXdp,
                TcProgram::NodeEgress,
            ],
        )
    }

    /// A well-formed packet of a random kind (never random bytes).
    fn valid(&mut self) -> (Vec<u8>, &'static str) {
        match self.rng.random_range(0..20) {
            0..=6 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                (self.tcp(s, d).build(), "tcp")
            }
            7..=11 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                (self.udp(s, d).build(), "udp")
            }
            12 => {
                let (s, d) = (self.addr(), self.addr());
                if self.rng.random_bool(0.3)
                    && let Some(b) = F::own_kind(&mut self.rng, s, d)
                {
                    return (b.build(), "neighbor_discovery");
                }
                let b = if self.rng.random_bool(0.3) {
                    P::<F>::icmp(s, d, self.rng.random(), self.rng.random())
                } else {
                    P::<F>::icmp_echo_request(s, d, self.rng.random(), self.rng.random())
                };
                let payload = self.payload(32);
                (self.ip_fields(b.payload(&payload)).build(), "icmp")
            }
            13..=15 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                let inner = if self.rng.random_ratio(1, 8) {
                    let payload = self.payload(16);
                    P::<F>::ip_raw(F::ip(s), F::ip(d), self.rng.random()).payload(&payload)
                } else {
                    self.tcp_or_udp(s, d)
                };
                let (src, dst) = (self.addr(), self.addr());
                (self.icmp_error(&inner, src, dst), "icmp_error")
            }
            16 => {
                let (s, d) = (self.addr(), self.addr());
                let proto = self.rng.random();
                let payload = self.payload(64);
                let b = P::<F>::ip_raw(s, d, proto).payload(&payload);
                (self.ip_fields(b).build(), "other_protocol")
            }
            17..=18 => self.fragments(),
            _ => {
                let frame = match self.rng.random_range(0..3) {
                    0 => arp_request(
                        [2, 0, 0, 0, 0, 9],
                        V4::random_addr(&mut self.rng),
                        V4::random_addr(&mut self.rng),
                    ),
                    1 => {
                        let p = self.payload(80);
                        ethernet_frame([2; 6], [4; 6], F::OTHER_ETHERTYPE, &p)
                    }
                    _ => {
                        let p = self.payload(80);
                        let ethertype = if self.rng.random_bool(0.5) {
                            ETH_P_ARP
                        } else {
                            self.rng.random()
                        };
                        ethernet_frame([2; 6], [4; 6], ethertype, &p)
                    }
                };
                (frame, "other_ethertype")
            }
        }
    }

    /// A fragmented datagram: the first fragment now, the others queued
    /// (sometimes reordered, dropped or with another id); or a lone later
    /// fragment with a random id and offset.
    fn fragments(&mut self) -> (Vec<u8>, &'static str) {
        let (s, d) = (self.endpoint(), self.endpoint());
        if self.rng.random_ratio(1, 4) {
            let payload = self.payload(64);
            let b = self.tcp_or_udp(s, d).payload(&payload);
            let b = F::later_fragment(&mut self.rng, b);
            return (b.build(), "fragment_later_random");
        }
        let payload = self.payload_of(24..200);
        let b = F::whole(self.tcp_or_udp(s, d).payload(&payload));
        let whole = b.build();
        let chunk = 8 * self.rng.random_range(1..=8);
        let mut frags = F::fragment(&whole, chunk, self.rng.random());
        if frags.len() < 2 {
            return (whole, "fragment_first");
        }
        let first = frags.remove(0);
        if self.rng.random_ratio(1, 4) {
            frags.reverse();
        }
        for mut f in frags {
            if self.rng.random_ratio(1, 10) {
                continue;
            }
            if self.rng.random_ratio(1, 10) {
                // Another datagram's id: the first fragment was not seen.
                F::other_datagram(&mut f);
            }
            // The later fragments follow on the first one's program.
            self.pending.push_back(Packet {
                prog: self.prog,
                frame: f,
                kind: "fragment_later",
            });
        }
        (first, "fragment_first")
    }

    fn payload_of(&mut self, len: std::ops::Range<usize>) -> Vec<u8> {
        let n = self.rng.random_range(len);
        random_bytes(&mut self.rng, n)
    }

    /// A reply, a follow-up or an ICMP error about a packet a program let
    /// through translated.
    fn answer(&mut self) -> Option<Packet> {
        if self.recent.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.recent.len());
        let prev = self.recent[i].clone();
        let p = parse(&prev.frame).ok()?;
        let (src, dst, proto) = F::ends(&prev.frame)?;
        let tcp = proto == IPPROTO_TCP;
        let natural = match prev.prog {
            TcProgram::PodIngress if F::ip(src) == F::host(Host::Hairpin) => TcProgram::PodIngress,
            TcProgram::PodIngress => TcProgram::PodEgress,
            TcProgram::NodeXdp => {
                if F::ip(src) == F::host(Host::Node) {
                    TcProgram::NodeXdp
                } else {
                    TcProgram::NodeEgress
                }
            }
            TcProgram::PodEgress | TcProgram::NodeEgress => TcProgram::PodIngress,
        };
        let prog = if self.rng.random_ratio(3, 4) {
            natural
        } else {
            self.program()
        };
        let roll = self.rng.random_range(0..10);
        let (b, kind) = if roll < 6 {
            let b = if tcp {
                self.tcp(dst, src)
            } else {
                self.udp(dst, src)
            };
            (b, "reply")
        } else if roll < 8 {
            let b = if tcp {
                self.tcp(src, dst)
            } else {
                self.udp(src, dst)
            };
            (b, "follow_up")
        } else {
            let inner = if tcp {
                self.tcp(src, dst)
            } else {
                self.udp(src, dst)
            };
            let from = if self.rng.random_bool(0.5) {
                F::ip(dst)
            } else {
                F::host(Host::Router)
            };
            let frame = self.icmp_error(&inner, from, F::ip(src));
            return Some(Packet {
                prog,
                frame,
                kind: "icmp_error_answer",
            });
        };
        let mut b = b.macs(p.eth_dst, p.eth_src);
        let fragmented = self.rng.random_ratio(1, 6);
        if fragmented {
            b = F::whole(b);
        }
        let mut frame = b.build();
        if fragmented {
            let chunk = 8 * self.rng.random_range(1..=4);
            let mut frags = F::fragment(&frame, chunk, self.rng.random());
            if frags.len() > 1 {
                frame = frags.remove(0);
                for f in frags {
                    self.pending.push_back(Packet {
                        prog,
                        frame: f,
                        kind: "fragment_later_answer",
                    });
                }
            }
        }
        Some(Packet { prog, frame, kind })
    }

    /// A TCP or UDP packet from a client (a pod, a backend reaching its
    /// own service, an outside client) to a seeded frontend, on the
    /// program that sees such traffic (mostly).
    fn for_frontend(&mut self) -> Packet {
        let f = &FRONTENDS[self.rng.random_range(0..FRONTENDS.len())];
        let (dst, proto, external) = (sock::<F>(f.ep), f.proto, f.flags & SVC_FLAG_EXTERNAL != 0);
        let client = pick(
            &mut self.rng,
            &[
                Host::PodA,
                Host::PodB,
                Host::B1,
                Host::Outside,
                Host::Outside,
                Host::Stranger,
            ],
        );
        let src = F::sock(F::host(client), self.port());
        let b = if proto == IPPROTO_TCP || self.rng.random_ratio(1, 10) {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        };
        let natural = if external {
            TcProgram::NodeXdp
        } else {
            TcProgram::PodIngress
        };
        let prog = if self.rng.random_ratio(4, 5) {
            natural
        } else {
            self.program()
        };
        Packet {
            prog,
            frame: b.build(),
            kind: "to_frontend",
        }
    }

    /// A packet of a seeded flow: from its client to its frontend, or its
    /// backend's reply (to the client, or to the address it was
    /// source-NATed to), on the program that sees it (mostly).
    fn of_flow(&mut self) -> Option<Packet> {
        if self.flows.is_empty() {
            return None;
        }
        let f = self.flows[self.rng.random_range(0..self.flows.len())];
        let via = f.via;
        let external = FRONTENDS
            .iter()
            .any(|x| sock::<F>(x.ep) == f.vip && x.flags & SVC_FLAG_EXTERNAL != 0);
        let hairpin = via.is_some_and(|v| F::ip(v) == F::host(Host::Hairpin));
        let (src, dst, natural, kind) = if self.rng.random_bool(0.5) {
            let prog = if external {
                TcProgram::NodeXdp
            } else {
                TcProgram::PodIngress
            };
            (f.client, f.vip, prog, "flow_service")
        } else {
            let prog = match (external, via.is_some(), hairpin) {
                (_, _, true) => TcProgram::PodIngress,
                (true, true, _) => TcProgram::NodeXdp,
                (true, false, _) => TcProgram::NodeEgress,
                _ => TcProgram::PodEgress,
            };
            (f.backend, via.unwrap_or(f.client), prog, "flow_reply")
        };
        let b = if f.proto == IPPROTO_TCP {
            self.tcp(src, dst)
        } else {
            self.udp(src, dst)
        };
        let prog = if self.rng.random_ratio(4, 5) {
            natural
        } else {
            self.program()
        };
        Some(Packet {
            prog,
            frame: b.build(),
            kind,
        })
    }

    fn mutate(&mut self, mut f: Vec<u8>) -> Vec<u8> {
        for _ in 0..self.rng.random_range(1..=4) {
            if f.is_empty() {
                break;
            }
            let at = self.rng.random_range(0..f.len());
            match self.rng.random_range(0..5) {
                0 => f[at] ^= 1 << self.rng.random_range(0..8),
                1 => f[at] = self.rng.random(),
                2 => f.insert(at, self.rng.random()),
                3 => {
                    f.remove(at);
                }
                _ => f.truncate(at),
            }
        }
        F::confine(&mut f);
        f
    }

    /// The next packet of this family: the sweep first, then the mix.
    pub fn next_packet(&mut self) -> Packet {
        let n = self.made;
        self.made += 1;
        if let Some(p) = self.sweep.pop_front() {
            return p;
        }
        if !self.pending.is_empty()
            && self.rng.random_bool(0.6)
            && let Some(p) = self.pending.pop_front()
        {
            return p;
        }
        let roll = self.rng.random_range(0..100);
        if roll < 20
            && let Some(p) = self.answer()
        {
            return p;
        }
        if (20..28).contains(&roll)
            && let Some(p) = self.of_flow()
        {
            return p;
        }
        if (48..64).contains(&roll) {
            return self.for_frontend();
        }
        let prog = self.program();
        self.prog = prog;
        let (frame, kind) = match roll {
            20..=34 => {
                let (f, _) = self.valid();
                (self.mutate(f), "mutated")
            }
            35..=42 => {
                let (mut f, _) = self.valid();
                // Every offset over the run, not only random ones.
                let cut = usize::try_from(n).unwrap_or(0) % (f.len() + 1);
                f.truncate(cut);
                (f, "truncated")
            }
            43..=45 => {
                let mut f = self.payload(96);
                F::confine(&mut f);
                (f, "random_bytes")
            }
            46..=47 => {
                let (s, d) = (self.endpoint(), self.endpoint());
                let mut f = P::<F>::tcp(s, d).build();
                let tail = self.payload(80);
                f.truncate(ETH_HLEN);
                f.extend_from_slice(&tail);
                if f.len() > ETH_HLEN {
                    f[ETH_HLEN] = (F::VERSION << 4) | (f[ETH_HLEN] & 0x0f);
                }
                F::confine(&mut f);
                (f, "random_ip")
            }
            _ => self.valid(),
        };
        Packet { prog, frame, kind }
    }

    /// Every truncation of a few packets that reach the interesting paths,
    /// through every program.
    fn sweep(&mut self) -> Vec<Packet> {
        let pod = |port| F::sock(F::host(Host::PodA), port);
        let outside = |port| F::sock(F::host(Host::Outside), port);
        let mut templates = vec![
            P::<F>::tcp(pod(40000), sock::<F>(WEB))
                .flags(TCP_SYN)
                .build(),
            P::<F>::udp(pod(40001), sock::<F>(DNS))
                .payload(&[1; 12])
                .build(),
            P::<F>::tcp(pod(40002), sock::<F>(EMPTY_TCP))
                .flags(TCP_SYN)
                .build(),
            P::<F>::udp(pod(40003), sock::<F>(EMPTY_UDP))
                .payload(&[2; 8])
                .build(),
            P::<F>::tcp(outside(40004), sock::<F>(NP_REMOTE))
                .flags(TCP_SYN)
                .build(),
            P::<F>::udp(outside(40005), sock::<F>(NP_UDP))
                .payload(&[3; 20])
                .build(),
            P::<F>::udp(sock::<F>(B3.1), pod(40001))
                .payload(&[4; 12])
                .build(),
            P::<F>::icmp_error(
                F::host(Host::Router),
                F::host(Host::PodA),
                F::TOO_BIG.0,
                F::TOO_BIG.1,
                &P::<F>::udp(pod(40001), sock::<F>(B3.1)),
            )
            .build(),
            F::fragment(
                &F::whole(P::<F>::udp(pod(40006), sock::<F>(DNS)).payload(&[5; 40])).build(),
                16,
                7,
            )
            .remove(0),
            P::<F>::icmp_echo_request(F::host(Host::PodA), F::host(Host::Vip), 1, 2).build(),
        ];
        templates.extend(F::sweep_extra(pod(40007), sock::<F>(DNS)));
        let mut out = Vec::new();
        for t in templates {
            for prog in [
                TcProgram::PodIngress,
                TcProgram::PodEgress,
                TcProgram::NodeXdp,
                TcProgram::NodeEgress,
            ] {
                for cut in 0..=t.len() {
                    out.push(Packet {
                        prog,
                        frame: t[..cut].to_vec(),
                        kind: "sweep_truncated",
                    });
                }
            }
        }
        // Shuffle so that flows opened by the whole templates are answered
        // by their truncations too, in no fixed order.
        for i in (1..out.len()).rev() {
            let j = self.rng.random_range(0..=i);
            out.swap(i, j);
        }
        out
    }
}

/// A seeded flow of family `F` from `client` to the frontend `vip`,
/// pinned to backend `b`.
pub fn flow<F: Family>(
    client: F::Sock,
    vip: Ep,
    b: Backend,
    proto: u8,
    flags: u8,
    created_ns: u64,
    expires_ns: u64,
) -> SeededFlow<F::Sock> {
    let svc_id = FRONTENDS
        .iter()
        .find(|f| f.ep == vip && f.proto == proto && f.scope == SCOPE_EXTERNAL)
        .map(|f| f.svc_id + F::IDS)
        .unwrap_or_default();
    SeededFlow {
        client,
        vip: sock::<F>(vip),
        backend: sock::<F>(b.1),
        proto,
        backend_id: b.0 + F::IDS,
        svc_id,
        flags,
        created_ns,
        expires_ns,
        via: None,
    }
}
