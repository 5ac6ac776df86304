//! The vpcd client: serves a [`VirtualCard`] to pcscd's vsmartcard reader driver.
//!
//! Wire format (hardware.md §1.2): every message is a 2-byte big-endian length and that many
//! bytes. One byte from pcscd is a control code (0 power off, 1 power on, 2 reset — no
//! reply; 4 get ATR — reply the ATR); anything longer is a command APDU to answer.
//! "Inserted" = our TCP connection to the reader's port is open; closing it removes the card.
//!
//! Latency (§1.4): the Debian driver sends length and payload in two segments without
//! TCP_NODELAY, so the card must ACK at once — TCP_QUICKACK is re-armed before every read
//! (it is not sticky) — and must send each reply in one write with TCP_NODELAY.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::SockRef;

use super::VirtualCard;

/// Where Debian's vsmartcard-vpcd reader listens by default (slot 0; slot 1 is +1).
pub const DEFAULT_VPCD: &str = "127.0.0.1:35963";

const CTRL_POWER_OFF: u8 = 0;
const CTRL_POWER_ON: u8 = 1;
const CTRL_RESET: u8 = 2;
const CTRL_GET_ATR: u8 = 4;

#[derive(Debug)]
struct Shared {
    addr: SocketAddr,
    card: Mutex<VirtualCard>,
    inserted: AtomicBool,
    stop: AtomicBool,
    /// Commands are swallowed without an answer (a hung card); control codes still work.
    hang: AtomicBool,
    stream: Mutex<Option<TcpStream>>,
    connections: AtomicU64,
}

impl Shared {
    fn card(&self) -> MutexGuard<'_, VirtualCard> {
        self.card.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn stream(&self) -> MutexGuard<'_, Option<TcpStream>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A virtual card plugged into a vpcd reader. Starts inserted; [`CardServer::remove`] and
/// [`CardServer::insert`] unplug and replug it (persistent card state survives, like a real
/// key's). While inserted it reconnects by itself when pcscd restarts. Dropping it unplugs.
#[derive(Debug)]
pub struct CardServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl CardServer {
    /// Serves `card` to the vpcd reader at `addr` (e.g. [`DEFAULT_VPCD`]).
    pub fn connect(addr: SocketAddr, card: VirtualCard) -> io::Result<Self> {
        let shared = Arc::new(Shared {
            addr,
            card: Mutex::new(card),
            inserted: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            hang: AtomicBool::new(false),
            stream: Mutex::new(None),
            connections: AtomicU64::new(0),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("vpcd-card-{addr}"))
            .spawn(move || run(&s))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Pulls the card out: closes the connection; pcscd reports the removal at its next poll.
    pub fn remove(&self) {
        self.shared.inserted.store(false, Ordering::SeqCst);
        if let Some(s) = self.shared.stream().take() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Puts the card back in (connects again).
    pub fn insert(&self) {
        self.shared.inserted.store(true, Ordering::SeqCst);
        if let Some(t) = &self.thread {
            t.thread().unpark();
        }
    }

    /// Whether the card is meant to be inserted.
    pub fn is_inserted(&self) -> bool {
        self.shared.inserted.load(Ordering::SeqCst)
    }

    /// Whether a connection to pcscd is open right now.
    pub fn is_connected(&self) -> bool {
        self.shared.stream().is_some()
    }

    /// How many connections were made so far (each one is an insertion for pcscd).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Makes the card stop answering commands (`true`), like a wedged device, or answer again.
    pub fn set_hang(&self, hang: bool) {
        self.shared.hang.store(hang, Ordering::SeqCst);
    }

    /// Runs `f` on the card (inspect or change its state).
    pub fn with_card<R>(&self, f: impl FnOnce(&mut VirtualCard) -> R) -> R {
        f(&mut self.shared.card())
    }

    /// Unplugs and stops serving.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.remove();
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for CardServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn run(shared: &Shared) {
    while !shared.stop.load(Ordering::SeqCst) {
        if !shared.inserted.load(Ordering::SeqCst) {
            std::thread::park_timeout(Duration::from_millis(100));
            continue;
        }
        let stream = match TcpStream::connect_timeout(&shared.addr, Duration::from_secs(1)) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(addr = %shared.addr, error = %e, "vpcd reader not reachable; retrying");
                std::thread::park_timeout(Duration::from_millis(50));
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        match stream.try_clone() {
            Ok(c) => *shared.stream() = Some(c),
            Err(_) => continue,
        }
        // remove() may have run between connect and publishing the stream.
        if !shared.inserted.load(Ordering::SeqCst) || shared.stop.load(Ordering::SeqCst) {
            let _ = stream.shutdown(Shutdown::Both);
            shared.stream().take();
            continue;
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        tracing::debug!(addr = %shared.addr, "card inserted (connected to vpcd)");
        if let Err(e) = serve(shared, stream) {
            tracing::debug!(addr = %shared.addr, error = %e, "vpcd connection ended");
        }
        shared.stream().take();
        // The card was reset by being unplugged.
        shared.card().power_off();
        if shared.inserted.load(Ordering::SeqCst) && !shared.stop.load(Ordering::SeqCst) {
            // pcscd went away (restart): try again shortly.
            std::thread::park_timeout(Duration::from_millis(50));
        }
    }
}

fn serve(shared: &Shared, mut stream: TcpStream) -> io::Result<()> {
    let mut len = [0u8; 2];
    let mut buf = vec![0u8; 0xFFFF];
    loop {
        // Not sticky: re-arm before every read so pcscd's split segments are ACKed at once.
        let _ = SockRef::from(&stream).set_tcp_quickack(true);
        stream.read_exact(&mut len)?;
        let n = usize::from(u16::from_be_bytes(len));
        stream.read_exact(&mut buf[..n])?;
        let msg = &buf[..n];
        let reply = match msg {
            [] => None,
            [CTRL_POWER_OFF] => {
                shared.card().power_off();
                None
            }
            [CTRL_POWER_ON] => {
                shared.card().power_on();
                None
            }
            [CTRL_RESET] => {
                shared.card().reset();
                None
            }
            [CTRL_GET_ATR] => Some(shared.card().atr().to_vec()),
            [_] => None,
            apdu if shared.hang.load(Ordering::SeqCst) => {
                tracing::debug!(len = apdu.len(), "hung card swallowed a command");
                None
            }
            apdu => Some(shared.card().process(apdu)),
        };
        if let Some(reply) = reply {
            let reply = &reply[..reply.len().min(0xFFFF)];
            let mut frame = Vec::with_capacity(reply.len() + 2);
            frame.extend_from_slice(&(reply.len() as u16).to_be_bytes());
            frame.extend_from_slice(reply);
            stream.write_all(&frame)?;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use std::net::TcpListener;

    use keyfloat_hal::backend::sim::SimKeySpec;

    use super::*;

    fn frame(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as u16).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    fn read_frame(s: &mut TcpStream) -> Vec<u8> {
        let mut len = [0u8; 2];
        s.read_exact(&mut len).unwrap();
        let mut v = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut v).unwrap();
        v
    }

    /// Plays pcscd's side of the protocol against the card server.
    #[test]
    fn speaks_the_vpcd_protocol_and_replugs() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let card = VirtualCard::new(&SimKeySpec::from_seed("t", 4242, 1));
        let server = CardServer::connect(addr, card).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&frame(&[CTRL_GET_ATR])).unwrap();
        assert_eq!(read_frame(&mut s), super::super::ATR_YUBIKEY5_NFC);
        s.write_all(&frame(&[CTRL_POWER_ON])).unwrap();
        // Split like libifdvpcd does: length, then payload.
        s.write_all(&[0, 5]).unwrap();
        s.write_all(&[0x00, 0xF8, 0x00, 0x00, 0x00]).unwrap();
        s.write_all(&frame(&[0x00, 0xA4, 0x04, 0x00, 0x05, 0xA0, 0x00, 0x00, 0x03, 0x08]))
            .unwrap();
        let first = read_frame(&mut s);
        assert_eq!(first, [0x6D, 0x00], "GET SERIAL before SELECT: no applet");
        assert_eq!(&read_frame(&mut s)[..2], &[0x61, 0x11]);
        s.write_all(&frame(&[0x00, 0xF8, 0x00, 0x00, 0x00])).unwrap();
        assert_eq!(read_frame(&mut s), [0x00, 0x00, 0x10, 0x92, 0x90, 0x00]);

        server.remove();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest); // EOF: the card is out
        assert!(!server.is_connected());
        server.insert();
        let (mut s2, _) = listener.accept().unwrap();
        s2.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s2.write_all(&frame(&[CTRL_GET_ATR])).unwrap();
        assert_eq!(read_frame(&mut s2).len(), super::super::ATR_YUBIKEY5_NFC.len());
        assert_eq!(server.connections(), 2);
        server.stop();
    }
}
