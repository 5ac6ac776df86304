//! Child processes in tests: run a tool until it succeeds (a device or service that shows up
//! at its next poll), and talk to a long-running child line by line over stdin/stdout.

use std::io::{BufRead, BufReader, Lines, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use crate::wait::wait_for_every;

/// Status, stdout and stderr of a finished command, for failure messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether a finished command succeeded, and its stdout followed by its stderr.
pub fn outcome(o: &Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    (o.status.success(), text)
}

/// The stdout of a command that must have succeeded (else the test fails with its output).
#[track_caller]
pub fn success_stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", output_text(o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs the command `make` builds (every 100 ms, ≤ `limit`) until its output passes
/// `accept`; returns that output. Fails naming `what` with the last output otherwise.
#[track_caller]
pub fn run_until(
    limit: Duration,
    what: impl std::fmt::Display,
    mut make: impl FnMut() -> Command,
    accept: impl Fn(&Output) -> bool,
) -> Output {
    wait_for_every(Duration::from_millis(100), limit, what, || {
        let out = make()
            .output()
            .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", make()));
        if accept(&out) {
            Ok(out)
        } else {
            Err(output_text(&out))
        }
    })
}

/// A child driven over its stdin, answering one line at a time on stdout; killed when dropped.
#[derive(Debug)]
pub struct Piped {
    /// The process.
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Piped {
    /// Spawns `cmd` with stdin and stdout piped.
    pub fn spawn(cmd: &mut Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stdin = child.stdin.take();
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        Self { child, stdin, lines }
    }

    /// The next line of its stdout (fails the test at end of output).
    pub fn line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(line)) => line,
            other => panic!("no line from the child: {other:?}"),
        }
    }

    /// Writes `command` and a newline to its stdin.
    pub fn send(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        writeln!(stdin, "{command}").expect("write to the child's stdin");
    }

    /// Sends `command` and expects `answer` as the next line.
    pub fn ask(&mut self, command: &str, answer: &str) {
        self.send(command);
        assert_eq!(self.line(), answer, "answer to {command:?}");
    }

    /// Sends `command` (e.g. `quit`), closes stdin and expects a successful exit.
    pub fn finish(mut self, command: &str) {
        self.send(command);
        self.stdin = None;
        let status = self.child.wait().expect("wait for the child");
        assert!(status.success(), "the child exited with {status}");
    }
}

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
