//! The card side of the vpcd link: connect to the vpcd driver inside pcscd, answer its control
//! messages and APDUs, simulate tearing, and reconnect.
//!
//! vpcd frames every message as a 2-byte big-endian length and a payload; a 1-byte payload is a
//! control message (0 power off, 1 power on, 2 reset, 4 get ATR), anything longer is an APDU. The
//! `vpicc` crate speaks that framing; we hand it a `TcpStream` we opened ourselves so that we keep a
//! second handle on the socket: for `TCP_QUICKACK`, which Linux clears again after it acknowledges,
//! so it is set before every poll (Debian's vpcd sends length and payload in two writes, and
//! with delayed ACKs each APDU would otherwise wait ~40 ms), and for shutting the socket down in
//! the middle of an APDU to simulate a card torn out of the field.

use std::cell::Cell;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use socket2::SockRef;
use tracing::{debug, info, warn};

/// The first vpcd reader ("Virtual PCD 00 00") listens here; the second on the next port.
pub const VPCD_PORT: u16 = 35963;

/// How long a new connection may wait for vpcd's first message before it is made again.
const FIRST_MESSAGE_TIMEOUT: Duration = Duration::from_secs(2);

/// A card that the runner puts behind vpcd.
pub trait SimulatedCard {
    /// The answer to reset.
    fn atr(&self) -> &[u8];
    /// The reader powered the card (a new session: volatile state is cleared).
    fn power_on(&mut self);
    /// The reader reset the card (same as a power cycle for a contactless card).
    fn reset(&mut self);
    /// The reader switched the field off, or the card was torn away.
    fn power_off(&mut self);
    /// Processes one command APDU and returns the response (data followed by SW1 SW2).
    fn process(&mut self, command: &[u8]) -> Vec<u8>;
    /// Processes one command APDU while the power fails in the middle of its first write to
    /// non-volatile memory (part of that write lands, nothing after it). By default the command
    /// is processed whole.
    fn process_with_power_cut(&mut self, command: &[u8]) {
        let _lost = self.process(command);
    }
    /// Writes the card's persistent state out if it changed, returning whether it did. An error
    /// is fatal: a card that cannot keep its state must stop answering rather than pretend.
    fn persist(&mut self) -> io::Result<bool>;
}

/// Whether the APDU during which the card is torn still takes effect on the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TearMode {
    /// The card vanishes before it processes the command: nothing changes on the card.
    BeforeProcessing,
    /// The card processes the command (its state changes and is kept) and vanishes before the
    /// answer leaves: the host sees an error although the command took effect.
    AfterProcessing,
    /// The power fails in the middle of the command's first write to non-volatile memory (part
    /// of the write lands); the card vanishes.
    DuringWrite,
}

/// A tearing simulation: the card answers `after` APDUs, then drops the connection when the next
/// one arrives; it reconnects (a new insertion) and counts again, `times` times in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TearPlan {
    /// APDUs answered on each connection before the tear.
    pub after: u32,
    /// What happens to the APDU that is torn.
    pub mode: TearMode,
    /// How many tears in all (then the card keeps answering).
    pub times: u32,
    /// How long the card stays away before it comes back.
    pub away: Duration,
}

/// How long a torn card stays away by default: longer than pcscd's presence poll (400 ms), so
/// that pcscd sees the removal before the card returns. A card that comes back within one poll
/// can leave pcscd's vpcd reader with a card it considers mute.
pub const DEFAULT_AWAY: Duration = Duration::from_millis(600);

/// How to run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// The vpcd address (loopback, port [`VPCD_PORT`] or the next).
    pub addr: SocketAddr,
    /// Tearing simulation, if any.
    pub tear: Option<TearPlan>,
    /// How long to keep trying to reach vpcd at the start and after it went away.
    pub connect_timeout: Duration,
    /// Stop (returning `Ok`) when vpcd goes away instead of waiting for it to come back.
    pub exit_when_vpcd_leaves: bool,
}

impl RunOptions {
    /// Defaults for the reader at `port` on loopback.
    pub fn new(port: u16) -> Self {
        RunOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            tear: None,
            connect_timeout: Duration::from_secs(10),
            exit_when_vpcd_leaves: false,
        }
    }
}

/// What a run did (returned when it ends).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// APDUs answered.
    pub apdus: u64,
    /// Tears simulated.
    pub tears: u32,
    /// Connections made to vpcd.
    pub connections: u32,
}

/// Connects to vpcd, retrying until `timeout` (pcscd may still be loading the driver).
fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Ok(stream) => {
                // Our answers go out in one write; without Nagle they leave at once.
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) if Instant::now() < deadline => {
                debug!("vpcd at {addr} not reachable yet: {e}");
                sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "cannot reach vpcd at {addr}: {e}. Is pcscd running with the vpcd driver? \
                         Start it with `pcscd -f` (package vsmartcard-vpcd) and wait until \
                         `ss -ltn` shows port {}",
                        addr.port()
                    ),
                ))
            }
        }
    }
}

/// Adapts a [`SimulatedCard`] to vpicc, counting APDUs and tearing on plan.
struct Link<'c, C> {
    card: &'c mut C,
    socket: TcpStream,
    /// APDUs answered on this connection.
    answered: u32,
    tear: Option<TearPlan>,
    torn: bool,
    fatal: Option<io::Error>,
    total: u64,
    /// vpcd asked for the ATR on this connection (its presence check, always its first word to
    /// a new card).
    asked_atr: Cell<bool>,
    /// vpcd addressed this connection as the card before it (see [`run`]).
    stale: bool,
}

impl<C: SimulatedCard> Link<'_, C> {
    fn cut(&mut self) -> Vec<u8> {
        // Both directions: vpcd sees the card gone, and vpicc's write of our (empty) answer fails,
        // which ends the poll loop.
        let _ = self.socket.shutdown(Shutdown::Both);
        self.card.power_off();
        Vec::new()
    }

    fn persist(&mut self) -> bool {
        match self.card.persist() {
            Ok(changed) => {
                if changed {
                    // Tests read this line to find the APDUs that write (see card_tearing.rs).
                    debug!("APDU {} changed the card's memory", self.total + 1);
                }
                true
            }
            Err(e) => {
                self.fatal = Some(e);
                self.cut();
                false
            }
        }
    }
}

impl<C: SimulatedCard> vpicc::VSmartCard for Link<'_, C> {
    fn atr(&self) -> &[u8] {
        self.asked_atr.set(true);
        self.card.atr()
    }

    fn power_on(&mut self) {
        debug!("power on");
        self.card.power_on();
    }

    fn power_off(&mut self) {
        debug!("power off");
        if !self.asked_atr.get() {
            // A power-down before vpcd even checked for a card is meant for the card that was
            // here before (pcscd still handling its removal); pcscd would then keep this one
            // unpowered. Leave, and come back once pcscd has caught up.
            self.stale = true;
            let _ = self.socket.shutdown(Shutdown::Both);
        }
        self.card.power_off();
    }

    fn reset(&mut self) {
        debug!("reset");
        self.card.reset();
    }

    fn execute(&mut self, command: &[u8]) -> Vec<u8> {
        if let Some(plan) = self.tear {
            if self.answered >= plan.after {
                self.torn = true;
                match plan.mode {
                    TearMode::BeforeProcessing => {}
                    TearMode::AfterProcessing => {
                        let _lost = self.card.process(command);
                    }
                    TearMode::DuringWrite => self.card.process_with_power_cut(command),
                }
                if !self.persist() {
                    return Vec::new();
                }
                info!(
                    "tearing after {} APDUs ({:?}) on command {}",
                    self.answered,
                    plan.mode,
                    hex::encode(command.get(..4).unwrap_or(command))
                );
                return self.cut();
            }
        }
        let response = self.card.process(command);
        if !self.persist() {
            return Vec::new();
        }
        self.answered += 1;
        self.total += 1;
        response
    }
}

/// Runs `card` behind vpcd until vpcd goes away for longer than the connect timeout (an error),
/// or, with [`RunOptions::exit_when_vpcd_leaves`], until it goes away at all.
pub fn run<C: SimulatedCard>(card: &mut C, options: &RunOptions) -> io::Result<RunSummary> {
    let mut summary = RunSummary::default();
    let mut tears_left = options.tear.map_or(0, |p| p.times);
    loop {
        let stream = connect(options.addr, options.connect_timeout)?;
        summary.connections += 1;
        info!("card inserted: connected to vpcd at {}", options.addr);
        let socket = stream.try_clone()?;
        let mut link = Link {
            card: &mut *card,
            socket,
            answered: 0,
            tear: options.tear.filter(|_| tears_left > 0),
            torn: false,
            fatal: None,
            total: 0,
            asked_atr: Cell::new(false),
            stale: false,
        };
        // vpcd talks to a new card within a few hundred milliseconds (pcscd's presence poll). A
        // connection made while vpcd was still closing the previous one can sit unserved in the
        // listen backlog; if nothing arrives in time, start over with a fresh connection.
        link.socket.set_read_timeout(Some(FIRST_MESSAGE_TIMEOUT))?;
        let mut first = true;
        let mut connection = vpicc::Connection::from(stream);
        let end = loop {
            if let Err(e) = SockRef::from(&link.socket).set_tcp_quickack(true) {
                warn!("cannot set TCP_QUICKACK (every APDU will be slow): {e}");
            }
            if let Err(e) = connection.poll(&mut link) {
                break e;
            }
            if first {
                first = false;
                link.socket.set_read_timeout(None)?;
            }
        };
        if first
            && matches!(
                end.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            )
        {
            info!("vpcd did not talk to the new connection; connecting again");
            continue;
        }
        summary.apdus += link.total;
        if let Some(e) = link.fatal.take() {
            return Err(io::Error::new(
                e.kind(),
                format!("cannot save the card state, stopping the card: {e}"),
            ));
        }
        if link.stale {
            info!("vpcd addressed the previous card on this connection; inserting again");
            sleep(options.tear.map_or(DEFAULT_AWAY, |p| p.away));
            continue;
        }
        if link.torn {
            summary.tears += 1;
            tears_left = tears_left.saturating_sub(1);
            info!("card torn away; reinserting it with its stored state");
            if let Some(plan) = options.tear {
                sleep(plan.away);
            }
            continue;
        }
        link.card.power_off();
        if options.exit_when_vpcd_leaves {
            info!("vpcd closed the connection ({end}); stopping");
            return Ok(summary);
        }
        info!("vpcd closed the connection ({end}); reconnecting");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A card that echoes the command back with 9000, counting what it processed.
    #[derive(Default)]
    struct EchoCard {
        processed: Arc<Mutex<Vec<Vec<u8>>>>,
        powered: bool,
        persisted: u32,
        fail_persist: bool,
    }

    impl SimulatedCard for EchoCard {
        fn atr(&self) -> &[u8] {
            &[0x3B, 0x00]
        }
        fn power_on(&mut self) {
            self.powered = true;
        }
        fn reset(&mut self) {
            self.powered = true;
        }
        fn power_off(&mut self) {
            self.powered = false;
        }
        fn process(&mut self, command: &[u8]) -> Vec<u8> {
            self.processed.lock().unwrap().push(command.to_vec());
            let mut r = command.to_vec();
            r.extend_from_slice(&[0x90, 0x00]);
            r
        }
        fn persist(&mut self) -> io::Result<bool> {
            if self.fail_persist {
                return Err(io::Error::other("disk full"));
            }
            self.persisted += 1;
            Ok(true)
        }
    }

    /// The vpcd side of the framing, as pcscd's driver speaks it (length and payload in two writes,
    /// like Debian's vpcd).
    struct FakeVpcd {
        stream: TcpStream,
    }

    impl FakeVpcd {
        fn send(&mut self, payload: &[u8]) -> io::Result<()> {
            self.stream
                .write_all(&(payload.len() as u16).to_be_bytes())?;
            self.stream.write_all(payload)
        }
        fn recv(&mut self) -> io::Result<Vec<u8>> {
            let mut len = [0u8; 2];
            self.stream.read_exact(&mut len)?;
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            self.stream.read_exact(&mut buf)?;
            Ok(buf)
        }
        fn apdu(&mut self, cmd: &[u8]) -> io::Result<Vec<u8>> {
            self.send(cmd)?;
            self.recv()
        }
    }

    fn listener() -> (TcpListener, RunOptions) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut o = RunOptions::new(l.local_addr().unwrap().port());
        o.exit_when_vpcd_leaves = true;
        o.connect_timeout = Duration::from_secs(5);
        (l, o)
    }

    #[test]
    fn answers_control_messages_and_apdus() {
        let (l, o) = listener();
        let processed = Arc::new(Mutex::new(Vec::new()));
        let seen = processed.clone();
        let t = std::thread::spawn(move || {
            let mut card = EchoCard {
                processed: seen,
                ..Default::default()
            };
            let s = run(&mut card, &o).unwrap();
            (s, card.persisted, card.powered)
        });
        let (stream, _) = l.accept().unwrap();
        let mut v = FakeVpcd { stream };
        v.send(&[4]).unwrap();
        assert_eq!(v.recv().unwrap(), vec![0x3B, 0x00]);
        v.send(&[1]).unwrap();
        assert_eq!(
            v.apdu(&[0, 0xA4, 4, 0]).unwrap(),
            vec![0, 0xA4, 4, 0, 0x90, 0]
        );
        assert_eq!(
            v.apdu(&[0x80, 1, 2, 3]).unwrap(),
            vec![0x80, 1, 2, 3, 0x90, 0]
        );
        drop(v);
        let (summary, persisted, powered) = t.join().unwrap();
        assert_eq!(summary.apdus, 2);
        assert_eq!(summary.connections, 1);
        assert_eq!(summary.tears, 0);
        assert_eq!(persisted, 2);
        assert!(!powered, "vpcd leaving powers the card off");
        assert_eq!(processed.lock().unwrap().len(), 2);
    }

    fn tear_run(mode: TearMode) -> (RunSummary, Vec<Vec<u8>>, Vec<Vec<u8>>) {
        let (l, mut o) = listener();
        o.tear = Some(TearPlan {
            after: 2,
            mode,
            times: 1,
            away: Duration::ZERO,
        });
        let processed = Arc::new(Mutex::new(Vec::new()));
        let seen = processed.clone();
        let t = std::thread::spawn(move || {
            let mut card = EchoCard {
                processed: seen,
                ..Default::default()
            };
            run(&mut card, &o).unwrap()
        });
        let mut answers = Vec::new();
        let (stream, _) = l.accept().unwrap();
        let mut v = FakeVpcd { stream };
        v.send(&[1]).unwrap();
        answers.push(v.apdu(&[0, 1, 0, 0]).unwrap());
        answers.push(v.apdu(&[0, 2, 0, 0]).unwrap());
        // The third APDU tears: the connection ends without an answer.
        v.send(&[0, 3, 0, 0]).unwrap();
        assert!(v.recv().is_err(), "a torn card sends no answer");
        // The card comes back on a new connection and answers again (no more tears planned).
        let (stream, _) = l.accept().unwrap();
        let mut v = FakeVpcd { stream };
        v.send(&[1]).unwrap();
        for i in 4..8u8 {
            answers.push(v.apdu(&[0, i, 0, 0]).unwrap());
        }
        drop(v);
        let s = t.join().unwrap();
        let p = processed.lock().unwrap().clone();
        (s, answers, p)
    }

    #[test]
    fn tearing_before_processing_drops_the_command() {
        let (s, answers, processed) = tear_run(TearMode::BeforeProcessing);
        assert_eq!(s.tears, 1);
        assert_eq!(s.connections, 2);
        assert_eq!(answers.len(), 6);
        assert!(!processed.contains(&vec![0, 3, 0, 0]));
        assert_eq!(processed.len(), 6);
    }

    #[test]
    fn tearing_after_processing_keeps_the_effect_but_loses_the_answer() {
        let (s, answers, processed) = tear_run(TearMode::AfterProcessing);
        assert_eq!(s.tears, 1);
        assert_eq!(answers.len(), 6);
        assert!(processed.contains(&vec![0, 3, 0, 0]));
        assert_eq!(processed.len(), 7);
    }

    #[test]
    fn a_connection_vpcd_never_serves_is_made_again() {
        let (l, o) = listener();
        let t = std::thread::spawn(move || run(&mut EchoCard::default(), &o).unwrap());
        // The first connection is accepted and left silent, as a stale backlog entry would be.
        let (silent, _) = l.accept().unwrap();
        let (stream, _) = l.accept().unwrap();
        let mut v = FakeVpcd { stream };
        v.send(&[1]).unwrap();
        assert_eq!(v.apdu(&[0, 9, 0, 0]).unwrap(), vec![0, 9, 0, 0, 0x90, 0]);
        drop((v, silent));
        let s = t.join().unwrap();
        assert_eq!((s.connections, s.apdus), (2, 1));
    }

    #[test]
    fn a_power_down_before_the_presence_check_makes_the_card_come_again() {
        let (l, o) = listener();
        let t = std::thread::spawn(move || run(&mut EchoCard::default(), &o).unwrap());
        let (stream, _) = l.accept().unwrap();
        let mut stale = FakeVpcd { stream };
        stale.send(&[0]).unwrap();
        assert!(stale.recv().is_err(), "the card leaves");
        let (stream, _) = l.accept().unwrap();
        let mut v = FakeVpcd { stream };
        v.send(&[4]).unwrap();
        assert_eq!(v.recv().unwrap(), vec![0x3B, 0x00]);
        // Once the ATR was asked, a power-down is an ordinary one.
        v.send(&[0]).unwrap();
        v.send(&[1]).unwrap();
        assert_eq!(v.apdu(&[0, 9, 0, 0]).unwrap(), vec![0, 9, 0, 0, 0x90, 0]);
        drop(v);
        let s = t.join().unwrap();
        assert_eq!((s.connections, s.apdus), (2, 1));
    }

    #[test]
    fn a_card_that_cannot_save_its_state_stops() {
        let (l, o) = listener();
        let t = std::thread::spawn(move || {
            let mut card = EchoCard {
                fail_persist: true,
                ..Default::default()
            };
            run(&mut card, &o)
        });
        let (stream, _) = l.accept().unwrap();
        let mut v = FakeVpcd { stream };
        v.send(&[1]).unwrap();
        v.send(&[0, 1, 0, 0]).unwrap();
        assert!(
            v.recv().is_err(),
            "no answer for a command whose effect was not saved"
        );
        let err = t.join().unwrap().unwrap_err();
        assert!(
            err.to_string().contains("cannot save the card state"),
            "{err}"
        );
    }

    #[test]
    fn an_absent_vpcd_is_reported_with_what_to_do() {
        let (l, mut o) = listener();
        drop(l);
        o.connect_timeout = Duration::from_millis(100);
        let err = run(&mut EchoCard::default(), &o).unwrap_err();
        assert!(err.to_string().contains("pcscd -f"), "{err}");
    }
}
