//! What one call of a component may use, per component: the host's defaults, which an operator
//! may override for a service (`--component-limits NAME:key=value,…`). Each limit stops the
//! call with an error that names it.

use std::collections::HashMap;
use std::time::Duration;

/// What one call of a service may use (`--component-limits`).
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Linear memory one instance may grow to.
    pub memory_bytes: usize,
    /// Time the component's own code may run in one call (waiting on the host excluded).
    pub cpu_time: Duration,
    /// Time one call may take in all, waiting included.
    pub wall_time: Duration,
    /// Aggregate writes one call may make.
    pub max_writes: usize,
    /// Messages one call may send.
    pub max_messages: usize,
    /// Aggregates one `find` may return or scan.
    pub max_find_results: usize,
    /// Bytes of one aggregate's JSON, one message payload.
    pub max_value_bytes: usize,
    /// Bytes of what a call returns: a response, a saga context, a command's payload.
    pub max_response_bytes: usize,
    /// Host calls (storage, broker, sagas, logging) one call may make.
    pub max_host_calls: usize,
    /// Log lines one call may write; further lines are dropped.
    pub max_log_lines: usize,
    /// Calls of the service's handlers (requests and messages) running at once; more wait.
    pub concurrency: usize,
    /// Grant the real wall and monotonic clocks; without, the component sees the Unix epoch.
    pub clock: bool,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_bytes: 256 << 20,
            cpu_time: Duration::from_secs(5),
            wall_time: Duration::from_secs(60),
            max_writes: 1_000,
            max_messages: 1_000,
            max_find_results: 10_000,
            max_value_bytes: 1 << 20,
            max_response_bytes: 4 << 20,
            max_host_calls: 100_000,
            max_log_lines: 1_000,
            concurrency: 128,
            clock: false,
        }
    }
}

/// The keys `--component-limits` takes.
pub const KEYS: &str = "memory-mb, cpu-ms, call-timeout-s, max-writes, max-messages, max-find, max-value-kb, \
                        max-response-kb, max-host-calls, max-log-lines, concurrency, clock";

impl Limits {
    /// Sets one limit by its name, e.g. ("memory-mb", "512").
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{key} must be a whole number, not {value:?}"))
        };
        let positive = || match number()? {
            0 => Err(format!("{key} must be at least 1")),
            n => Ok(n),
        };
        match key {
            "memory-mb" => self.memory_bytes = (positive()? as usize) << 20,
            "cpu-ms" => self.cpu_time = Duration::from_millis(positive()?),
            "call-timeout-s" => self.wall_time = Duration::from_secs(positive()?),
            "max-writes" => self.max_writes = number()? as usize,
            "max-messages" => self.max_messages = number()? as usize,
            "max-find" => self.max_find_results = positive()? as usize,
            "max-value-kb" => self.max_value_bytes = (positive()? as usize) << 10,
            "max-response-kb" => self.max_response_bytes = (positive()? as usize) << 10,
            "max-host-calls" => self.max_host_calls = positive()? as usize,
            "max-log-lines" => self.max_log_lines = number()? as usize,
            "concurrency" => self.concurrency = positive()? as usize,
            "clock" => {
                self.clock = value
                    .parse()
                    .map_err(|_| format!("clock must be true or false, not {value:?}"))?
            }
            other => return Err(format!("unknown limit {other:?}; the limits are: {KEYS}")),
        }
        Ok(())
    }
}

/// Parses `NAME:key=value,key=value` into the service name and its limits (the defaults with
/// those keys changed).
pub fn parse_override(spec: &str, defaults: &Limits) -> Result<(String, Limits), String> {
    let (name, settings) = spec.split_once(':').ok_or_else(|| {
        format!("{spec:?} is not NAME:key=value,…, e.g. grader:memory-mb=512,cpu-ms=2000")
    })?;
    if name.is_empty() {
        return Err(format!("{spec:?} names no service"));
    }
    let mut limits = defaults.clone();
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| format!("{setting:?} in {spec:?} is not key=value"))?;
        limits
            .set(key.trim(), value.trim())
            .map_err(|e| format!("{spec:?}: {e}"))?;
    }
    Ok((name.to_string(), limits))
}

/// The defaults and the per-service overrides.
#[derive(Debug, Clone, Default)]
pub struct LimitTable {
    pub defaults: Limits,
    pub overrides: HashMap<String, Limits>,
}

impl LimitTable {
    pub fn for_service(&self, name: &str) -> &Limits {
        self.overrides.get(name).unwrap_or(&self.defaults)
    }

    /// The most memory any component may have: what the instance pool reserves per memory.
    pub fn largest_memory(&self) -> usize {
        self.overrides
            .values()
            .map(|l| l.memory_bytes)
            .chain([self.defaults.memory_bytes])
            .max()
            .unwrap_or_default()
    }

    /// The longest any component call may take, waiting included.
    pub fn longest_call(&self) -> std::time::Duration {
        self.overrides
            .values()
            .map(|l| l.wall_time)
            .chain([self.defaults.wall_time])
            .max()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_change_only_what_they_name() {
        let defaults = Limits::default();
        let (name, limits) =
            parse_override("grader:memory-mb=512, cpu-ms=2000,clock=true", &defaults).unwrap();
        assert_eq!(name, "grader");
        assert_eq!(limits.memory_bytes, 512 << 20);
        assert_eq!(limits.cpu_time, Duration::from_secs(2));
        assert!(limits.clock);
        assert_eq!(limits.max_writes, defaults.max_writes);
    }

    #[test]
    fn bad_overrides_say_what_is_wrong() {
        let defaults = Limits::default();
        let error = |spec| parse_override(spec, &defaults).unwrap_err();
        assert!(error("grader").contains("is not NAME:key=value"));
        assert!(error(":cpu-ms=1").contains("names no service"));
        assert!(error("grader:cpu").contains("is not key=value"));
        assert!(error("grader:cpu-ms=fast").contains("must be a whole number"));
        assert!(error("grader:cpu-ms=0").contains("at least 1"));
        assert!(error("grader:speed=11").contains("unknown limit \"speed\""));
        assert!(error("grader:clock=yes").contains("true or false"));
    }
}
