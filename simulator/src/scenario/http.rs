//! The seam between the scenario runner and the server it talks to.

use keyfloat_hal::CellReader;

/// A response as the runner sees it.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Body parsed as JSON (`Null` if not JSON).
    pub body: serde_json::Value,
}

impl Response {
    /// The error object's `code`, if any.
    pub fn code(&self) -> Option<String> {
        self.body.get("code").and_then(|c| c.as_str()).map(str::to_string)
    }
}

/// Builds the server for a scenario, given the reader of the scenario's cell (the in-process
/// one is `in_process_server`, feature `in-process-server`).
pub type ServerFactory = Box<dyn FnOnce(CellReader) -> Result<Box<dyn HttpTarget>, String>>;

/// A server the runner can send requests to and restart.
pub trait HttpTarget: Send {
    /// Sends one request; transport failures are reported as status 0.
    fn request(&mut self, method: &str, path: &str, body: Option<&serde_json::Value>) -> Response;
    /// Restarts the server on the same data, reading keys from `reader`.
    fn restart(&mut self, reader: CellReader) -> Result<(), String>;
    /// Whether the server has exited on purpose (crashIfNoHardwareKey).
    fn exited(&self) -> bool;
}
