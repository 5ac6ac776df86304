//! A scripted [`ApduTransport`] for tests: a list of expected commands and the replies to
//! give, checked in order (a mismatch panics with both byte strings), and [`ScriptedTransport::done`]
//! to assert the whole script was used.

use std::collections::VecDeque;

use super::ApduTransport;
use crate::error::{Error, Result};

#[derive(Debug)]
enum Step {
    Reply(Vec<u8>, Result<Vec<u8>>),
    Hang(Vec<u8>),
}

/// See the module docs.
#[derive(Debug, Default)]
pub struct ScriptedTransport {
    steps: VecDeque<Step>,
    sent: Vec<Vec<u8>>,
}

impl ScriptedTransport {
    /// An empty script.
    pub fn new() -> Self {
        Self::default()
    }

    /// Expects `command`, answers `reply` (data ‖ SW).
    pub fn expect(mut self, command: impl AsRef<[u8]>, reply: impl AsRef<[u8]>) -> Self {
        self.steps
            .push_back(Step::Reply(command.as_ref().to_vec(), Ok(reply.as_ref().to_vec())));
        self
    }

    /// Expects `command`, fails the transmit with `error` (the transport's own failure).
    pub fn expect_err(mut self, command: impl AsRef<[u8]>, error: Error) -> Self {
        self.steps.push_back(Step::Reply(command.as_ref().to_vec(), Err(error)));
        self
    }

    /// Expects `command` and never answers (a hung card): the transmit blocks forever.
    pub fn hang_on(mut self, command: impl AsRef<[u8]>) -> Self {
        self.steps.push_back(Step::Hang(command.as_ref().to_vec()));
        self
    }

    /// Panics unless every scripted step was used.
    pub fn done(&self) {
        assert!(
            self.steps.is_empty(),
            "script not finished; still expected: {:02X?}",
            self.steps
        );
    }

    /// Every command sent so far.
    pub fn sent(&self) -> &[Vec<u8>] {
        &self.sent
    }
}

impl ApduTransport for ScriptedTransport {
    fn transmit(&mut self, command: &[u8]) -> Result<Vec<u8>> {
        self.sent.push(command.to_vec());
        let step = self
            .steps
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected command after end of script: {command:02X?}"));
        match step {
            Step::Reply(expected, reply) => {
                assert_eq!(command, expected.as_slice(), "command differs from the script");
                reply
            }
            Step::Hang(expected) => {
                assert_eq!(command, expected.as_slice(), "command differs from the script");
                loop {
                    std::thread::park();
                }
            }
        }
    }
}
