//go:build !pipeops_testhooks

package daemon

// stallHook is the test seam that wedges a watched loop on purpose. It
// does not ship: production builds have none (stall_testhooks.go is built
// only with -tags pipeops_testhooks).
func stallHook(string) func(loop string) { return nil }
