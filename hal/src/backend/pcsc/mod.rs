//! PC/SC backend (feature `pcsc`): YubiKey-like PIV cards through the system PC/SC service.
//!
//! - A card is a key when it behaves like one: SELECT PIV and GET SERIAL work
//!   (the reader name is never trusted).
//! - Connections are shared and every operation runs inside one short transaction, so the
//!   key coexists with other well-behaved clients. A reset by someone else (`ResetCard`)
//!   reconnects and re-runs the operation (which always starts with SELECT PIV).
//! - Every PC/SC call runs on a worker thread with a deadline (see `worker.rs`): a card that
//!   never answers gives [`ErrorKind::Timeout`] instead of a stuck monitor.
//! - Contention is never reported as absence: `SharingViolation` is [`ErrorKind::Busy`]
//!   naming candidate holder processes ([`crate::holders`]).
//! - The client library honours `PCSCLITE_CSOCK_NAME` (libpcsclite reads it once per process).

use std::ffi::CString;
use std::fmt;
use std::time::Duration;

use pcsc::{Context, Disposition, Protocols, Scope, ShareMode};

use crate::error::{Error, ErrorKind, Result};
use crate::holders::candidate_holders;
use crate::key::{
    BackendKind, Firmware, HardwareKey, HotplugSource, KeyAttestation, KeyId, KeyInfo, KeyProvider, Proof,
    ProofCapability, Prover, Serial, SignatureScheme,
};
use crate::piv::{self, session, ApduTransport};

mod watch;
mod worker;

pub use watch::PcscWatch;
use worker::{with_deadline, Worker};

#[cfg(test)]
mod tests;

/// Deadlines of the backend's PC/SC calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// One key operation (connect, or one transaction of APDUs).
    pub call: Duration,
    /// Identifying a freshly inserted card.
    pub probe: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            call: Duration::from_secs(5),
            probe: Duration::from_secs(3),
        }
    }
}

/// At which point a PC/SC error happened; the same code means different things.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Talking to pcscd itself (context, reader list, status change).
    Service,
    /// Connecting to a card.
    Connect,
    /// Transmitting to a connected card.
    Transmit,
}

/// Maps a PC/SC error to the crate's error (hardware.md §4.5). `SharingViolation` scans
/// `/proc` for candidate holders.
pub(crate) fn map_error(e: pcsc::Error, phase: Phase, what: &str) -> Error {
    use pcsc::Error as P;
    let kind = match e {
        P::SharingViolation => {
            return Error::with_source(ErrorKind::Busy, format!("{what}: card is held by another process"), e)
                .with_holders(candidate_holders());
        }
        P::NoSmartcard | P::UnknownReader | P::ReaderUnavailable | P::NoReadersAvailable | P::RemovedCard
            if phase != Phase::Transmit =>
        {
            ErrorKind::NotPresent
        }
        P::NoSmartcard
        | P::UnknownReader
        | P::ReaderUnavailable
        | P::RemovedCard
        | P::NotTransacted
        | P::ResetCard
        | P::UnpoweredCard
        | P::NoReadersAvailable => ErrorKind::Disconnected,
        P::NoService | P::ServiceStopped | P::CommError | P::Shutdown | P::NotReady => ErrorKind::ServiceUnavailable,
        P::Timeout | P::WaitedTooLong | P::Cancelled | P::UnresponsiveCard => ErrorKind::Timeout,
        P::NoAccess | P::SecurityViolation => ErrorKind::PermissionDenied,
        P::InsufficientBuffer | P::InvalidAtr | P::ProtoMismatch | P::CardUnsupported | P::UnsupportedCard => {
            ErrorKind::Protocol
        }
        _ => ErrorKind::Other,
    };
    Error::with_source(kind, what.to_string(), e)
}

/// One connected card as a key needs it. The real one wraps a `pcsc::Card`; tests script it.
pub trait CardChannel: Send {
    /// Runs `op` inside one transaction (other clients' commands wait until it ends).
    /// After a reset by another client, reconnects and runs `op` once more.
    fn transaction(&mut self, op: &mut dyn FnMut(&mut dyn ApduTransport) -> Result<()>) -> Result<()>;
}

/// A shared connection to the card in one reader.
struct PcscChannel {
    /// Always `Some` until dropped (taken there to disconnect without a reset).
    card: Option<pcsc::Card>,
    _ctx: Context,
}

impl PcscChannel {
    fn connect(reader: &str) -> Result<Self> {
        let name = CString::new(reader).map_err(|_| Error::new(ErrorKind::InvalidData, "reader name contains NUL"))?;
        let ctx = Context::establish(Scope::User).map_err(|e| map_error(e, Phase::Service, "connecting to pcscd"))?;
        let card = ctx
            .connect(&name, ShareMode::Shared, Protocols::ANY)
            .map_err(|e| map_error(e, Phase::Connect, &format!("connecting to the card in {reader:?}")))?;
        Ok(Self {
            card: Some(card),
            _ctx: ctx,
        })
    }

    fn card(&mut self) -> Result<&mut pcsc::Card> {
        self.card
            .as_mut()
            .ok_or_else(|| Error::new(ErrorKind::Disconnected, "card handle already closed"))
    }

    fn reconnect(&mut self) -> Result<()> {
        self.card()?
            .reconnect(ShareMode::Shared, Protocols::ANY, Disposition::LeaveCard)
            .map_err(|e| map_error(e, Phase::Connect, "reconnecting after a card reset"))
    }
}

impl Drop for PcscChannel {
    fn drop(&mut self) {
        // Leave the card as it is: dropping a `pcsc::Card` would reset it under the other
        // clients' feet (and lose their PIN state).
        if let Some(card) = self.card.take() {
            let _ = card.disconnect(Disposition::LeaveCard);
        }
    }
}

struct TxTransport<'a> {
    card: &'a pcsc::Card,
    reset: bool,
    buf: Vec<u8>,
}

impl ApduTransport for TxTransport<'_> {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        match self.card.transmit(command, &mut self.buf) {
            Ok(r) => Ok(r.to_vec()),
            Err(e) => {
                if e == pcsc::Error::ResetCard {
                    self.reset = true;
                }
                Err(map_error(e, Phase::Transmit, "transmitting to the card"))
            }
        }
    }
}

impl CardChannel for PcscChannel {
    fn transaction(&mut self, op: &mut dyn FnMut(&mut dyn ApduTransport) -> Result<()>) -> Result<()> {
        for attempt in 0..2 {
            let may_retry = attempt == 0;
            // `None`: the card was reset by another client; reconnect and run `op` again.
            let outcome = match self.card()?.transaction() {
                Ok(tx) => {
                    let mut t = TxTransport {
                        card: &tx,
                        reset: false,
                        buf: vec![0; pcsc::MAX_BUFFER_SIZE_EXTENDED],
                    };
                    let result = op(&mut t);
                    let reset = t.reset;
                    let _ = tx.end(Disposition::LeaveCard);
                    (!(reset && may_retry)).then_some(result)
                }
                Err(pcsc::Error::ResetCard) if may_retry => None,
                Err(e) => Some(Err(map_error(e, Phase::Transmit, "starting a card transaction"))),
            };
            match outcome {
                Some(result) => return result,
                None => {
                    tracing::debug!(target: "keyfloat::key", "card was reset by another client; reconnecting");
                    self.reconnect()?;
                }
            }
        }
        Err(Error::new(
            ErrorKind::Disconnected,
            "the card keeps being reset by another process",
        ))
    }
}

/// The PIV slot holding the proof key.
const PROOF_SLOT: u8 = piv::slot::CARD_AUTH;

fn model_for(firmware: Option<Firmware>) -> String {
    match firmware.map(|f| f.major) {
        Some(5) => "YubiKey 5",
        Some(4) => "YubiKey 4",
        Some(3) => "YubiKey NEO",
        _ => "PIV smart card",
    }
    .to_string()
}

fn reader_of(id: &KeyId) -> Result<&str> {
    id.path_in(BackendKind::Pcsc)
        .ok_or_else(|| Error::new(ErrorKind::NotPresent, format!("{id} is not a PC/SC key")))
}

/// A PIV key in a PC/SC reader.
pub struct PcscKey {
    info: KeyInfo,
    worker: Worker<Box<dyn CardChannel>>,
    timeout: Duration,
}

impl fmt::Debug for PcscKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PcscKey")
            .field("info", &self.info)
            .field("worker", &self.worker)
            .finish()
    }
}

impl PcscKey {
    /// Connects (shared) to the card in `reader`.
    ///
    /// pcscd makes `SCardConnect` wait (without a timeout) while another client holds a
    /// transaction on the card, so a connect that misses its deadline is reported as
    /// [`ErrorKind::Busy`] naming the candidate holders.
    pub fn open(reader: &str, timeouts: Timeouts) -> Result<Self> {
        // Refused as "not answering" (not as busy) while an earlier call is still blocked.
        worker::ensure_not_wedged(reader)?;
        let owned = reader.to_string();
        let worker = Worker::start("keyfloat-pcsc-key", Some(reader), timeouts.call, move || {
            PcscChannel::connect(&owned).map(|c| Box::new(c) as Box<dyn CardChannel>)
        })
        .map_err(|e| {
            if e.kind() != ErrorKind::Timeout {
                return e;
            }
            Error::new(
                ErrorKind::Busy,
                format!(
                    "the card in {reader:?} stayed locked for {} ms (another client's transaction, or a wedged card)",
                    timeouts.call.as_millis()
                ),
            )
            .with_holders(candidate_holders())
        })?;
        Ok(Self {
            info: bare_info(reader),
            worker,
            timeout: timeouts.call,
        })
    }

    /// A key over any [`CardChannel`] (the seam tests use to script a card).
    pub fn with_channel(info: KeyInfo, channel: Box<dyn CardChannel>, timeout: Duration) -> Result<Self> {
        let worker = Worker::start("keyfloat-pcsc-scripted", None, timeout, move || Ok(channel))?;
        Ok(Self { info, worker, timeout })
    }

    /// Runs `op` in one transaction, after SELECT PIV, with the call deadline.
    fn op<T, F>(&mut self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&mut dyn ApduTransport) -> Result<T> + Send + 'static,
    {
        self.worker.call(self.timeout, move |channel| {
            let mut out = None;
            channel.transaction(&mut |t| {
                session::select_piv(t)?;
                out = Some(op(t)?);
                Ok(())
            })?;
            out.ok_or_else(|| Error::new(ErrorKind::Other, "card operation produced no result"))
        })
    }
}

fn bare_info(reader: &str) -> KeyInfo {
    KeyInfo {
        id: KeyId::new(BackendKind::Pcsc, reader),
        backend: BackendKind::Pcsc,
        path: reader.to_string(),
        serial: None,
        model: "PIV smart card".into(),
        firmware: None,
        capability: ProofCapability::Signature,
    }
}

impl HardwareKey for PcscKey {
    fn info(&self) -> &KeyInfo {
        &self.info
    }

    fn read_serial(&mut self) -> Result<Serial> {
        self.op(session::read_serial).map(Serial::from)
    }

    fn read_firmware(&mut self) -> Result<Firmware> {
        self.op(session::read_version)
    }

    fn prover(&mut self) -> Option<&mut dyn Prover> {
        Some(self)
    }
}

impl Prover for PcscKey {
    fn read_certificate(&mut self) -> Result<Vec<u8>> {
        self.op(|t| session::read_certificate(t, PROOF_SLOT))
    }

    fn sign_challenge(&mut self, challenge: &[u8]) -> Result<Proof> {
        let challenge = challenge.to_vec();
        let (alg, signature) = self.op(move |t| session::sign_with_slot(t, PROOF_SLOT, &challenge))?;
        let scheme = if alg == piv::alg::RSA2048 {
            SignatureScheme::RsaPkcs1Sha256
        } else {
            SignatureScheme::EcdsaP256Sha256
        };
        Ok(Proof {
            scheme,
            signed_prefix: Vec::new(),
            signature,
        })
    }

    fn attest(&mut self) -> Result<KeyAttestation> {
        self.op(|t| session::read_attestation(t, PROOF_SLOT))
    }
}

/// What probing one reader found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// A YubiKey-like PIV card (or one that does not answer in time).
    Key(KeyInfo),
    /// A card another process holds: reported as a key (never as absent), identified
    /// once it is free.
    Busy(KeyInfo),
    /// No card, or a card that is not a PIV key.
    NotAKey,
}

/// Identifies the card in `reader` by behaviour, with the probe deadline. A card another
/// process holds, or one that does not answer in time, is still reported as a key: the
/// monitor's validation then says busy / timeout instead of the key silently vanishing.
pub(crate) fn probe(reader: &str, timeouts: Timeouts) -> Probe {
    let owned = reader.to_string();
    let result = with_deadline("keyfloat-pcsc-probe", Some(reader), timeouts.probe, move || {
        let mut channel = PcscChannel::connect(&owned)?;
        let mut found = None;
        channel.transaction(&mut |t| {
            found = Some(session::identify(t)?);
            Ok(())
        })?;
        found.ok_or_else(|| Error::new(ErrorKind::Other, "probe produced no result"))
    });
    probe_outcome(reader, result)
}

pub(crate) fn probe_outcome(reader: &str, result: Result<session::Identity>) -> Probe {
    let mut info = bare_info(reader);
    match result {
        Ok(id) => {
            info.serial = Some(Serial::from(id.serial));
            info.firmware = id.firmware;
            info.model = model_for(id.firmware);
            Probe::Key(info)
        }
        Err(e) if e.kind() == ErrorKind::Busy => {
            info.model = "smart card (held by another process)".into();
            Probe::Busy(info)
        }
        Err(e) if e.kind() == ErrorKind::Timeout => {
            info.model = "smart card (not answering)".into();
            Probe::Key(info)
        }
        Err(e) => {
            tracing::debug!(target: "keyfloat::key", reader, error = %e, "card is not a PIV key");
            Probe::NotAKey
        }
    }
}

/// The PC/SC [`KeyProvider`].
#[derive(Debug, Clone, Default)]
pub struct PcscProvider {
    timeouts: Timeouts,
}

impl PcscProvider {
    /// A provider with the default deadlines.
    pub fn new() -> Self {
        Self::default()
    }

    /// A provider with other deadlines.
    pub fn with_timeouts(timeouts: Timeouts) -> Self {
        Self { timeouts }
    }

    /// Reader names and whether a card is in each, as pcscd sees them now.
    pub fn readers(&self) -> Result<Vec<(String, bool)>> {
        with_deadline("keyfloat-pcsc-list", None, self.timeouts.call, || {
            let ctx =
                Context::establish(Scope::User).map_err(|e| map_error(e, Phase::Service, "connecting to pcscd"))?;
            let names = ctx
                .list_readers_owned()
                .map_err(|e| map_error(e, Phase::Service, "listing readers"))?;
            let mut states: Vec<pcsc::ReaderState> = names
                .iter()
                .map(|n| pcsc::ReaderState::new(n.clone(), pcsc::State::UNAWARE))
                .collect();
            if !states.is_empty() {
                ctx.get_status_change(Some(Duration::ZERO), &mut states)
                    .map_err(|e| map_error(e, Phase::Service, "reading reader states"))?;
            }
            Ok(states
                .iter()
                .map(|s| {
                    (
                        s.name().to_string_lossy().into_owned(),
                        watch::card_present(s.event_state()),
                    )
                })
                .collect())
        })
    }
}

impl KeyProvider for PcscProvider {
    fn kind(&self) -> BackendKind {
        BackendKind::Pcsc
    }

    fn list(&self) -> Result<Vec<KeyInfo>> {
        Ok(self
            .readers()?
            .into_iter()
            .filter(|(_, present)| *present)
            .filter_map(|(reader, _)| match probe(&reader, self.timeouts) {
                Probe::Key(info) | Probe::Busy(info) => Some(info),
                Probe::NotAKey => None,
            })
            .collect())
    }

    fn open(&self, id: &KeyId) -> Result<Box<dyn HardwareKey>> {
        Ok(Box::new(PcscKey::open(reader_of(id)?, self.timeouts)?))
    }

    fn watch(&self) -> Result<Box<dyn HotplugSource>> {
        Ok(Box::new(PcscWatch::start(self.timeouts)?))
    }
}
