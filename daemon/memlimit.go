package daemon

import (
	"log/slog"
	"os"
	"runtime/debug"

	"github.com/pipeops/pipeops-vm-agent/internal/config"
)

// memoryAllowance is the heap the agent may use beyond its two memory
// budgets: informer caches, goroutines, in-flight requests that hold no
// budget, and the runtime's own (idle, the whole process is about 31 MiB RSS).
const memoryAllowance = 32 << 20

// memoryLimit is the Go runtime's soft memory limit for cfg: the buffered
// response budget, the tunnel's receive-window budget and the allowance.
func memoryLimit(cfg *config.Config) int64 {
	return cfg.Proxy.MemoryBudget + cfg.Tunnel.MemoryBudget + memoryAllowance
}

// applyMemoryLimit sets the Go runtime's soft memory limit (unless
// GOMEMLIMIT is set). The budgets bound what the agent holds live; without
// a limit the garbage collector lets the heap grow to twice the live heap
// before it collects, so a burst that fills the budgets would double them
// in RSS. With it, the collector works harder as the heap nears the sum of
// the budgets instead, and the unit's MemoryHigh/MemoryMax stay above it.
func applyMemoryLimit(cfg *config.Config, log *slog.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		log.Debug("Go memory limit from GOMEMLIMIT", "limit_bytes", debug.SetMemoryLimit(-1))
		return
	}
	limit := memoryLimit(cfg)
	debug.SetMemoryLimit(limit)
	log.Debug("Go soft memory limit set from proxy.memory_budget_bytes + tunnel.memory_budget_bytes + 32 MiB (GOMEMLIMIT overrides it)",
		"limit_bytes", limit)
}
