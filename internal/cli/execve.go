package cli

import "syscall"

// execve replaces pipeopsctl with another program (journalctl), so signals,
// the pager and exit codes behave exactly as if the user ran it.
func execve(argv0 string, argv []string, envv []string) error {
	return syscall.Exec(argv0, argv, envv)
}
