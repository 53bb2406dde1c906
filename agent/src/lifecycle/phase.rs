//! The agent's lifecycle phase: Running → Draining → Stopping → Exited, never backwards.
//!
//! An explicit enum so that `/status` and the logs name the phase, and so that every transition
//! goes through [`PhaseMachine::advance`], which logs it with its reason and refuses to move
//! backwards (a second TERM during Stopping must not re-enter Draining).

/// Where the agent is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// The daemon runs and the node is registered (or trying to be).
    Running,
    /// Shutdown began: readiness is false and the record says `draining`; the load balancer is
    /// given `--drain-delay` to stop sending.
    Draining,
    /// The registration is gone; the daemon has been asked to stop.
    Stopping,
    /// The daemon has exited; the agent is about to.
    Exited,
}

impl Phase {
    /// The lower-case name used in logs and `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
            Self::Exited => "exited",
        }
    }
}

/// The current phase, advanced only forwards.
#[derive(Debug)]
pub struct PhaseMachine {
    phase: Phase,
}

impl Default for PhaseMachine {
    fn default() -> Self {
        Self {
            phase: Phase::Running,
        }
    }
}

impl PhaseMachine {
    /// The current phase.
    pub fn get(&self) -> Phase {
        self.phase
    }

    /// Moves to `to` if that is forwards, logging the transition; returns whether it moved.
    pub fn advance(&mut self, to: Phase, reason: &str) -> bool {
        if to <= self.phase {
            return false;
        }
        tracing::info!(
            from = self.phase.as_str(),
            to = to.as_str(),
            reason,
            "lifecycle transition"
        );
        self.phase = to;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_forwards() {
        let mut m = PhaseMachine::default();
        assert!(m.advance(Phase::Draining, "TERM"));
        assert!(!m.advance(Phase::Draining, "second TERM"));
        assert!(!m.advance(Phase::Running, "never"));
        assert!(m.advance(Phase::Exited, "daemon exited"));
        assert_eq!(m.get(), Phase::Exited);
    }
}
