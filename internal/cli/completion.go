package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
)

// Shells "pipeopsctl completion" writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

func newCompletionCommand(e *env) *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script for bash, zsh or fish",
		ArgsUsage: "bash|zsh|fish",
		Description: "The packages install these scripts already (bash: /usr/share/bash-completion/completions/pipeopsctl, " +
			"zsh: /usr/share/zsh/vendor-completions/_pipeopsctl, fish: /usr/share/fish/vendor_completions.d/pipeopsctl.fish). " +
			"Elsewhere: source <(pipeopsctl completion bash), or write the output to one of those files.",
		BashComplete: func(c *cli.Context) {
			if c.NArg() == 0 {
				for _, s := range completionShells {
					fmt.Fprintln(c.App.Writer, s)
				}
			}
		},
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return withCode(ExitUsage, errors.New("usage: pipeopsctl completion bash|zsh|fish"))
			}
			return writeCompletion(e.stdout, c.App, c.Args().First())
		},
	}
}

// writeCompletion writes the script for shell. The bash and zsh scripts ask
// pipeopsctl itself for candidates (urfave/cli's hidden
// --generate-bash-completion flag), so they follow the installed binary; the
// fish script is urfave/cli's static rendering of the command tree.
func writeCompletion(w io.Writer, app *cli.App, shell string) error {
	var script string
	switch shell {
	case "bash":
		script = bashCompletion
	case "zsh":
		script = zshCompletion
	case "fish":
		s, err := app.ToFishCompletion()
		if err != nil {
			return fmt.Errorf("render the fish completion: %w", err)
		}
		script = s
	default:
		return withCode(ExitUsage, fmt.Errorf("unknown shell %q: want bash, zsh or fish", shell))
	}
	_, err := io.WriteString(w, script)
	return err
}

// CompletionScript returns the completion script for shell (bash, zsh or
// fish), exactly as "pipeopsctl completion SHELL" prints it. The packages
// ship its output, generated at build time (scripts/gendocs).
func CompletionScript(shell string) (string, error) {
	var b strings.Builder
	if err := writeCompletion(&b, App(), shell); err != nil {
		return "", err
	}
	return b.String(), nil
}

// App is pipeopsctl's command tree with the process's own stdout and
// stderr, for generated documentation (the man page pipeopsctl(1)) and
// completion scripts.
func App() *cli.App { return newApp(defaultEnv(os.Stdout, os.Stderr)) }

// bashCompletion completes commands, subcommands and flags by running the
// command line typed so far with --generate-bash-completion. Loaded on
// demand by bash-completion from /usr/share/bash-completion/completions.
const bashCompletion = `# bash completion for pipeopsctl                         -*- shell-script -*-
# Written by "pipeopsctl completion bash"; the packages install it as
# /usr/share/bash-completion/completions/pipeopsctl.

_pipeopsctl() {
	local cur=${COMP_WORDS[COMP_CWORD]}
	local -a typed=("${COMP_WORDS[@]:0:COMP_CWORD}")
	local IFS=$'\n' candidates
	if [[ $cur == -* ]]; then
		# A bare "--" would end the flags: ask with "-" for every flag.
		[[ $cur == -- ]] && cur=-
		candidates=$("${typed[@]}" "$cur" --generate-bash-completion 2>/dev/null)
		cur=${COMP_WORDS[COMP_CWORD]}
	else
		candidates=$("${typed[@]}" --generate-bash-completion 2>/dev/null)
	fi
	COMPREPLY=($(compgen -W "$candidates" -- "$cur"))
}

complete -o bashdefault -o default -F _pipeopsctl pipeopsctl
`

// zshCompletion is the same protocol for zsh: autoloaded from a fpath
// directory as _pipeopsctl, or registered with compdef when sourced.
const zshCompletion = `#compdef pipeopsctl
# zsh completion for pipeopsctl. Written by "pipeopsctl completion zsh"; the
# packages install it as _pipeopsctl in zsh's vendor completion directory.

_pipeopsctl() {
	local cur=${words[CURRENT]}
	local -a typed candidates
	typed=("${(@)words[1,CURRENT-1]}")
	if [[ $cur == -* ]]; then
		local ask=$cur
		[[ $ask == -- ]] && ask=- # a bare "--" would end the flags
		candidates=("${(@f)$("${typed[@]}" "$ask" --generate-bash-completion 2>/dev/null)}")
	else
		candidates=("${(@f)$("${typed[@]}" --generate-bash-completion 2>/dev/null)}")
	fi
	if [[ -n ${candidates[1]} ]]; then
		compadd -- "${candidates[@]}"
	else
		_files
	fi
}

if [[ ${funcstack[1]} == _pipeopsctl ]]; then
	_pipeopsctl "$@"
else
	compdef _pipeopsctl pipeopsctl
fi
`
