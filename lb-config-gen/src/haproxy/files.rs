//! Writing files HAProxy reads: the configuration (validated before it can go live) and the
//! server-state file.
//!
//! A configuration is installed as: write a temporary file in the target's directory, fsync it,
//! run `haproxy -c -f` on it, rename it over the target, fsync the directory. A file that fails
//! the check is removed and the target keeps the last good configuration, so what is on disk is
//! always what a restart would successfully load. The rename is only atomic within one file
//! system, which is why a target that is itself a bind-mounted single file is refused: the
//! rename would fail (EBUSY) or, worse, the mount would hide the new file from HAProxy.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use peerkeep_supervise::Supervisor;

/// Longest `haproxy -c` may run; 10,000 servers in one backend take about a second.
const CHECK_TIMEOUT: Duration = Duration::from_secs(60);

/// Installing a file failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Filesystem error.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `haproxy -c` could not be run.
    #[error("running {bin} -c: {source}")]
    CheckRun {
        /// The haproxy binary.
        bin: PathBuf,
        /// Why it did not run.
        source: peerkeep_supervise::RunError,
    },
    /// `haproxy -c` rejected the candidate.
    #[error("haproxy -c rejected the new configuration (the running one is kept): {output}")]
    Rejected {
        /// HAProxy's messages (the ALERT lines name the failing line).
        output: String,
    },
    /// The target is a single-file bind mount.
    #[error(
        "{path} is a bind-mounted single file: an atomic rename cannot replace it; mount its directory instead"
    )]
    SingleFileMount {
        /// The target.
        path: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Refuses a target that is a mount point of its own (a single-file bind mount).
pub fn refuse_single_file_mount(target: &Path) -> Result<(), FileError> {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        // Not Linux, or /proc not mounted: nothing to check against.
        return Ok(());
    };
    let Ok(target_abs) = std::path::absolute(target) else {
        return Ok(());
    };
    if mount_points(&mountinfo).any(|mp| mp == target_abs) {
        return Err(FileError::SingleFileMount {
            path: target.to_owned(),
        });
    }
    Ok(())
}

/// The mount points listed in a mountinfo text (field 5, with `\040`-style escapes decoded).
pub fn mount_points(mountinfo: &str) -> impl Iterator<Item = PathBuf> + '_ {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|raw| PathBuf::from(unescape_octal(raw)))
}

fn unescape_octal(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `bytes` to a fresh temporary file next to `target` and fsyncs it.
fn write_temp(target: &Path, bytes: &[u8]) -> Result<PathBuf, FileError> {
    let dir = parent(target);
    let name = target.file_name().map_or_else(
        || "haproxy.cfg".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    Ok(tmp)
}

fn parent(target: &Path) -> &Path {
    match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Renames `tmp` over `target` and fsyncs the directory so the rename survives a crash.
fn commit(tmp: &Path, target: &Path) -> Result<(), FileError> {
    std::fs::rename(tmp, target).map_err(io(target))?;
    let dir = parent(target);
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// Runs `haproxy -c -f path`.
pub async fn check(sup: &Supervisor, bin: &Path, path: &Path) -> Result<(), FileError> {
    let out = sup
        .run_output(
            Command::new(bin).arg("-c").arg("-f").arg(path),
            Some(CHECK_TIMEOUT),
        )
        .await
        .map_err(|source| FileError::CheckRun {
            bin: bin.to_owned(),
            source,
        })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr) + String::from_utf8_lossy(&out.stdout);
    let alerts: Vec<&str> = text.lines().filter(|l| l.contains("[ALERT]")).collect();
    let output = if alerts.is_empty() {
        text.trim().to_owned()
    } else {
        alerts.join("\n")
    };
    Err(FileError::Rejected { output })
}

/// Validates `bytes` with `haproxy -c` and, only if it passes, atomically replaces `target`.
pub async fn install_config(
    sup: &Supervisor,
    bin: &Path,
    target: &Path,
    bytes: &[u8],
) -> Result<(), FileError> {
    let tmp = write_temp(target, bytes)?;
    if let Err(e) = check(sup, bin, &tmp).await {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let result = commit(&tmp, target);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Atomically replaces `target` with `bytes` (no validation: for the server-state file).
pub fn install_plain(target: &Path, bytes: &[u8]) -> Result<(), FileError> {
    let tmp = write_temp(target, bytes)?;
    let result = commit(&tmp, target);
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_points_are_decoded() {
        let text = "22 1 0:21 / /proc rw - proc proc rw\n\
                    30 25 8:1 /srv/lb.cfg /etc/haproxy/my\\040cfg.cfg rw - ext4 /dev/sda1 rw\n";
        let points: Vec<PathBuf> = mount_points(text).collect();
        assert_eq!(
            points,
            [
                PathBuf::from("/proc"),
                PathBuf::from("/etc/haproxy/my cfg.cfg")
            ]
        );
    }

    #[test]
    fn a_mount_point_is_refused_and_a_plain_file_is_not() {
        assert!(matches!(
            refuse_single_file_mount(Path::new("/proc")),
            Err(FileError::SingleFileMount { .. })
        ));
        let dir = tempfile::tempdir().expect("temp dir");
        assert!(refuse_single_file_mount(&dir.path().join("haproxy.cfg")).is_ok());
    }

    #[test]
    fn install_plain_replaces_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("state");
        install_plain(&target, b"one").expect("first");
        install_plain(&target, b"two").expect("second");
        assert_eq!(std::fs::read(&target).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(dir.path()).expect("list").count(),
            1,
            "no temp file left"
        );
    }
}
