//! The haproxy process: started in master-worker mode under the supervisor.
//!
//! `-W` (master-worker) lets the master re-execute itself on `reload` while keeping the
//! listening sockets; `-db` keeps it in the foreground as our child so the supervisor sees it
//! exit; `-S` opens the master CLI used for reloads and `show proc`.

use std::path::Path;
use std::process::Command;

use peerkeep_supervise::{ChildHandle, SpawnError, Supervisor};

/// Starts `bin -W -db -S master_socket -f config`.
pub fn spawn(
    sup: &Supervisor,
    bin: &Path,
    config: &Path,
    master_socket: &Path,
) -> Result<ChildHandle, SpawnError> {
    // A socket file left by a previous run would make the bind fail.
    let _ = std::fs::remove_file(master_socket);
    let mut cmd = Command::new(bin);
    cmd.arg("-W")
        .arg("-db")
        .arg("-S")
        .arg(master_socket)
        .arg("-f")
        .arg(config);
    sup.spawn(&mut cmd)
}
