//! Rise/fall hysteresis of one backend's health.

use super::Health;

/// Rise/fall state machine. New targets start Up, so a config change never drops traffic to
/// healthy backends while their first probes are still out; `fall` consecutive failures take a
/// target Down and `rise` consecutive successes bring it back.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    health: Health,
    /// Consecutive results that disagree with `health`; any agreeing result resets it, which is
    /// what keeps a flapping backend from flipping state.
    streak: u32,
}

impl Tracker {
    /// A `rise` or `fall` of 0 acts as 1: a transition always needs at least one result.
    pub fn new(rise: u32, fall: u32) -> Self {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            health: Health::Up,
            streak: 0,
        }
    }

    pub fn health(&self) -> Health {
        self.health
    }

    /// Records one probe result; returns the new health on a transition.
    pub fn record(&mut self, ok: bool) -> Option<Health> {
        let (agrees, needed, other) = match self.health {
            Health::Up => (ok, self.fall, Health::Down),
            Health::Down => (!ok, self.rise, Health::Up),
        };
        if agrees {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < needed {
            return None;
        }
        self.streak = 0;
        self.health = other;
        Some(other)
    }
}
