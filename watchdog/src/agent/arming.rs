//! When to attach the fork-failure probe.
//!
//! Any program on the `sys_exit` tracepoint puts every syscall of every task
//! through the kernel's tracing slow path (+7-9 % on a syscall-bound loop,
//! measured), whatever the program does. So by default (`auto`) the probe
//! stays loaded but detached while every PID limit has room, and is attached
//! as soon as one comes under pressure: a limited pids cgroup or a system
//! limit at `arm_percent`, a pids.events rejection (an active finding), or
//! the always-attached, per-fork (not per-syscall) `nproc_pressure` probe
//! reporting a user near its RLIMIT_NPROC. It is detached again after
//! `disarm_after` without pressure. Pure: time is passed in.
use crate::{model::PidLimits, model::Time};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForkProbeMode {
    /// Attach under PID pressure only (no cost while limits have room).
    Auto,
    /// Attach for the whole session.
    Always,
    /// Never attach; cgroup rejections are still seen through pids.events.
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Arm(String),
    Disarm(String),
}

#[derive(Clone, Debug)]
pub struct Arming {
    arm_percent: f64,
    disarm_after_ms: u64,
    armed: bool,
    last_pressure: Option<Time>,
}

impl Arming {
    pub fn new(arm_percent: f64, disarm_after_ms: u64) -> Self {
        Self {
            arm_percent,
            disarm_after_ms,
            armed: false,
            last_pressure: None,
        }
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    /// The fullest limit of a sample at or above the arming threshold.
    pub fn sample_pressure(&self, l: &PidLimits) -> Option<String> {
        let mut levels: Vec<(f64, String)> = l
            .cgroups
            .iter()
            .filter_map(|c| {
                c.percent().map(|p| {
                    (
                        p,
                        format!(
                            "pids cgroup {} at {}/{}",
                            c.path,
                            c.current,
                            c.max.unwrap_or(0)
                        ),
                    )
                })
            })
            .collect();
        let s = l.system;
        if s.threads_max > 0 {
            levels.push((
                s.threads as f64 * 100.0 / s.threads_max as f64,
                format!("{} tasks of threads-max {}", s.threads, s.threads_max),
            ));
        }
        if s.pid_max > 0 {
            levels.push((
                s.threads as f64 * 100.0 / s.pid_max as f64,
                format!("{} tasks of pid_max {}", s.threads, s.pid_max),
            ));
        }
        levels
            .into_iter()
            .filter(|(p, _)| *p >= self.arm_percent)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(p, why)| format!("{why} ({p:.0}%)"))
    }

    /// Feed what was seen at `now`; returns the change to apply, if any.
    pub fn update(&mut self, now: Time, pressure: Option<String>) -> Option<Change> {
        match pressure {
            Some(why) => {
                self.last_pressure = Some(now);
                if self.armed {
                    return None;
                }
                self.armed = true;
                Some(Change::Arm(why))
            }
            None => {
                let quiet = self
                    .last_pressure
                    .is_none_or(|t| now.millis_since(t) >= self.disarm_after_ms);
                if !self.armed || !quiet {
                    return None;
                }
                self.armed = false;
                Some(Change::Disarm(format!(
                    "no PID limit above {:.0}% for {} s",
                    self.arm_percent,
                    self.disarm_after_ms / 1000
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PidsCgroupState, SystemPids};

    fn sample(current: u64) -> PidLimits {
        PidLimits {
            at: Time(0),
            cgroups: vec![PidsCgroupState {
                path: "/pod".into(),
                current,
                max: Some(100),
                events_max: 0,
            }],
            system: SystemPids {
                threads: 200,
                threads_max: 100_000,
                pid_max: 32_768,
            },
            consumers: Default::default(),
        }
    }

    #[test]
    fn arms_on_pressure_and_disarms_after_quiet() {
        let mut a = Arming::new(75.0, 60_000);
        assert_eq!(a.sample_pressure(&sample(50)), None);
        let why = a.sample_pressure(&sample(80)).unwrap();
        assert!(why.contains("/pod at 80/100"), "{why}");
        assert_eq!(a.update(Time(1_000), None), None);
        assert_eq!(
            a.update(Time(2_000), Some(why.clone())),
            Some(Change::Arm(why.clone()))
        );
        assert!(a.armed());
        assert_eq!(a.update(Time(3_000), Some(why)), None, "already armed");
        assert_eq!(a.update(Time(62_000), None), None, "59 s quiet");
        assert!(matches!(
            a.update(Time(63_000), None),
            Some(Change::Disarm(_))
        ));
        assert!(!a.armed());
    }

    #[test]
    fn system_limits_count_too() {
        let a = Arming::new(75.0, 60_000);
        let mut s = sample(0);
        s.system = SystemPids {
            threads: 30_000,
            threads_max: 100_000,
            pid_max: 32_768,
        };
        assert!(a.sample_pressure(&s).unwrap().contains("pid_max 32768"));
    }
}
