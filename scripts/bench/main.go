// Command bench measures the agent against baselines taken in the same run
// and prints ratios; it asserts nothing. Usage: go run ./scripts/bench <name>.
// Each benchmark lives in its own file and registers itself in benches.
package main

import (
	"fmt"
	"os"
	"sort"
)

// benches maps a subcommand to its runner. Files add entries in init.
var benches = map[string]func(args []string) error{}

func main() {
	if len(os.Args) < 2 || benches[os.Args[1]] == nil {
		names := make([]string, 0, len(benches))
		for n := range benches {
			names = append(names, n)
		}
		sort.Strings(names)
		fmt.Fprintf(os.Stderr, "usage: go run ./scripts/bench <%s> [flags]\n", joinOr(names))
		os.Exit(2)
	}
	if err := benches[os.Args[1]](os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func joinOr(s []string) string {
	out := ""
	for i, n := range s {
		if i > 0 {
			out += "|"
		}
		out += n
	}
	return out
}
