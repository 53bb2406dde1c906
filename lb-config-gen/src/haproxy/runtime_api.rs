//! The runtime API (stats socket, `level admin`): applying [`RuntimeCommand`]s and dumping
//! server state.
//!
//! All commands go over one connection in prompt mode, which ends every answer with a `> `
//! prompt, so each command's answer can be told apart and checked. An answer is accepted only
//! if it is empty or one of the messages `set server` prints on success; anything else — "No
//! such server.", a parse error — fails the whole batch and the caller falls back to a reload.

use std::path::PathBuf;
use std::time::Duration;

use super::socket::{SocketError, exchange};
use crate::runtime_cmd::RuntimeCommand;

/// Deadline for one batch; 1,000 commands take well under 100 ms.
const BATCH_TIMEOUT: Duration = Duration::from_secs(10);

/// Applying commands failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeApiError {
    /// The socket exchange failed.
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// The answers could not be matched to the commands.
    #[error("expected {expected} answers from the runtime API, got {got}")]
    Framing {
        /// Commands sent.
        expected: usize,
        /// Answers received.
        got: usize,
    },
    /// A command was refused.
    #[error("runtime API refused `{command}`: {answer}")]
    Refused {
        /// The command.
        command: String,
        /// HAProxy's answer.
        answer: String,
    },
}

/// A client of the runtime API socket.
#[derive(Debug, Clone)]
pub struct RuntimeApi {
    path: PathBuf,
}

impl RuntimeApi {
    /// A client for the socket at `path`.
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// Sends every command over one connection and checks every answer.
    pub async fn apply(&self, commands: &[RuntimeCommand]) -> Result<(), RuntimeApiError> {
        if commands.is_empty() {
            return Ok(());
        }
        let mut request = String::from("prompt\n");
        for c in commands {
            request.push_str(&c.to_string());
            request.push('\n');
        }
        request.push_str("quit\n");
        let answer = exchange(&self.path, &request, BATCH_TIMEOUT).await?;
        check_answers(commands, &answer)
    }

    /// `show servers state`, in the format `server-state-file` loads.
    pub async fn servers_state(&self) -> Result<String, SocketError> {
        exchange(&self.path, "show servers state\n", BATCH_TIMEOUT).await
    }
}

/// Splits a prompt-mode transcript into answers and checks each.
fn check_answers(commands: &[RuntimeCommand], transcript: &str) -> Result<(), RuntimeApiError> {
    // Transcript: <answer to prompt> "\n> " <answer 1> "\n> " ... <answer n> "\n> " <quit>.
    let parts: Vec<&str> = transcript.split("\n> ").collect();
    if parts.len() != commands.len() + 2 {
        return Err(RuntimeApiError::Framing {
            expected: commands.len(),
            got: parts.len().saturating_sub(2),
        });
    }
    for (command, answer) in commands.iter().zip(&parts[1..]) {
        let answer = answer.trim();
        let ok = answer.is_empty()
            || answer.starts_with("no need to change")
            || answer.starts_with("IP changed from")
            || answer.contains("port changed from");
        if !ok {
            return Err(RuntimeApiError::Refused {
                command: command.to_string(),
                answer: answer.chars().take(300).collect(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use peerkeep_registry::Slot;

    use super::*;
    use crate::config::ServiceName;
    use crate::render::BackendName;
    use crate::runtime_cmd::AdminState;

    fn cmd(n: u32) -> RuntimeCommand {
        RuntimeCommand::SetState {
            backend: BackendName::Service(ServiceName::new("b").expect("valid")),
            slot: Slot::new(n).expect("valid"),
            state: AdminState::Ready,
        }
    }

    #[test]
    fn transcript_of_2_6_is_split_per_command() {
        let ok = "\n> no need to change the addr, port changed from '1' to '9000' by 'stats socket command'\n\n> \n> ";
        assert!(check_answers(&[cmd(1), cmd(2)], ok).is_ok());
        let refused = "\n> \n> No such server.\n\n> ";
        let e = check_answers(&[cmd(1), cmd(9)], refused).expect_err("refused");
        assert!(e.to_string().contains("b/s9"), "{e}");
        assert!(matches!(
            check_answers(&[cmd(1)], "\n> "),
            Err(RuntimeApiError::Framing { .. })
        ));
    }
}
