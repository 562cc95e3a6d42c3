//! The engine's shape: how wasmtime is configured (component model, epoch interruption, the
//! pooling allocator and what it keeps resident), and the structure and memory growth one
//! instance is allowed.

use wasmtime::{Config, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{KEEP_RESIDENT_MEMORY, LimitExceeded, RuntimeConfig};

/// The structure one component instance may have, whatever its configuration: the largest
/// real components (componentize-py's Python interpreter) stay well below these.
const MAX_CORE_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 32;
const MAX_TABLE_ELEMENTS: usize = 100_000;

pub(super) fn engine_config(config: &RuntimeConfig, pooling: bool) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true);
    wasm.epoch_interruption(true);
    // SAGA_HOST_PERFMAP=1: wasmtime writes /tmp/perf-PID.map, which names the components'
    // compiled functions for `perf report` and for ops/callgrind-exams.sh.
    if std::env::var_os("SAGA_HOST_PERFMAP").is_some() {
        wasm.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        let instances = config.max_instances;
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(8))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .total_stacks(instances)
            .max_core_instances_per_component(MAX_CORE_INSTANCES as u32)
            .max_memories_per_component(MAX_MEMORIES as u32)
            .max_tables_per_component(MAX_TABLES as u32)
            .max_memory_size(config.limits.largest_memory())
            .table_elements(MAX_TABLE_ELEMENTS)
            // A fresh instance per call reuses pool slots all the time: keep the pages a small
            // service touches resident (reset in place) instead of returning them to the kernel
            // and faulting them in again. Whatever a call touched beyond that goes back to the
            // kernel as soon as its instance is freed (a batch of one): batching would leave a
            // quiet host holding the memory of its last calls — up to the memory limit each —
            // until enough other calls come along. A call that stays within the resident part
            // has nothing to return, so this costs small calls no system call.
            .linear_memory_keep_resident(KEEP_RESIDENT_MEMORY)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(128 << 10)
            .decommit_batch_size(1)
            .pagemap_scan(wasmtime::Enabled::Auto);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
}

/// Memory growth beyond the limit stops the call with an error that says so.
pub(super) struct Limiter {
    pub(super) max_memory: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_memory {
            return Err(LimitExceeded(format!(
                "it asked to grow its memory to {} MiB, beyond the limit of {} MiB (limit memory-mb)",
                desired.div_ceil(1 << 20),
                self.max_memory >> 20
            ))
            .into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            return Err(LimitExceeded(format!(
                "it tried to grow a table to {desired} elements; the limit is {MAX_TABLE_ELEMENTS}"
            ))
            .into());
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
