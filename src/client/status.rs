//! Status mode: asks the server for the lottery's progress and prints it as a table.
//! (Being written: the STATUS query of docs/PROTOCOL.md.)

use super::{ClientError, Outcome};
use crate::config::ClientConfig;
use crate::shutdown::Shutdown;

/// Prints the lottery's status once, or every `loop.period` for `loop.amount` times.
pub(super) fn run(_config: &ClientConfig, _shutdown: &Shutdown) -> Result<Outcome, ClientError> {
    Err(ClientError::Closed {
        stage: "status (not built yet)",
    })
}
