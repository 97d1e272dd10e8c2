// Package coredns makes the cluster's CoreDNS answer *.pipeops.internal as
// *.<cluster domain> (protocol.md §12, "CoreDNS"), and takes that back. It
// edits the Corefile in ConfigMap kube-system/coredns inside a marked block
// that it can find, update and remove, leaving every other line byte for
// byte; on k3s, whose packaged CoreDNS manifest rewrites that ConfigMap on
// every restart, it writes the same rule as a key of the coredns-custom
// ConfigMap, which k3s's Corefile imports. Used by internal/charts.
package coredns

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Markers of the agent's block in a Corefile.
const (
	beginMarker = "# BEGIN pipeops-agent:"
	endMarker   = "# END pipeops-agent"
)

// CustomKey is the agent's key in k3s's coredns-custom ConfigMap: k3s's
// Corefile imports /etc/coredns/custom/*.override inside its main server
// block.
const CustomKey = "pipeops.override"

// ErrNoKubernetesBlock means the Corefile has no server block with the
// kubernetes plugin, so there is nowhere to put the rewrite.
var ErrNoKubernetesBlock = errors.New("the Corefile has no server block with the kubernetes plugin")

// Rule is the rewrite, one directive per line without indentation:
// questions for <x>.<domain> are asked as <x>.<cluster domain>, and the
// answers are renamed back so resolvers accept them.
func Rule(domain, clusterDomain string) []string {
	q := func(s string) string { return regexp.QuoteMeta(strings.Trim(s, ".")) }
	d, c := strings.Trim(domain, "."), strings.Trim(clusterDomain, ".")
	return []string{
		"rewrite stop {",
		fmt.Sprintf("    name regex (.+)\\.%s\\.$ {1}.%s.", q(d), c),
		fmt.Sprintf("    answer name (.+)\\.%s\\.$ {1}.%s.", q(c), d),
		"}",
	}
}

// block is the marked block for rule, indented.
func block(rule []string, domain, clusterDomain, indent, eol string) string {
	lines := []string{fmt.Sprintf("%s *.%s resolves as *.%s (removed by \"pipeopsctl monitoring uninstall\")",
		beginMarker, strings.Trim(domain, "."), strings.Trim(clusterDomain, "."))}
	lines = append(lines, rule...)
	lines = append(lines, endMarker)
	var b strings.Builder
	for _, l := range lines {
		b.WriteString(indent + l + eol)
	}
	return b.String()
}

// CustomOverride is the content of CustomKey: the rule with a header.
func CustomOverride(domain, clusterDomain string) string {
	return block(Rule(domain, clusterDomain), domain, clusterDomain, "", "\n")
}

// lines splits s after each "\n", so joining the parts gives s back.
func lines(s string) []string { return strings.SplitAfter(s, "\n") }

// ImportsCustom reports whether the Corefile imports k3s's coredns-custom
// *.override files into a server block: then the rule belongs there.
func ImportsCustom(corefile string) bool {
	for _, l := range lines(corefile) {
		f := strings.Fields(l)
		if len(f) == 2 && f[0] == "import" && strings.HasSuffix(f[1], ".override") && strings.Contains(f[1], "/coredns/custom/") {
			return true
		}
	}
	return false
}

// HasReload reports whether the Corefile uses the reload plugin, which
// picks up changes (to imported files too, since CoreDNS 1.6.2) by itself.
func HasReload(corefile string) bool {
	for _, l := range lines(corefile) {
		if f := strings.Fields(l); len(f) > 0 && f[0] == "reload" {
			return true
		}
	}
	return false
}

// Add returns corefile with the marked block for the rule inside the first
// server block that uses the kubernetes plugin, right after its opening
// line and indented like its directives. An existing block is replaced in
// place. Every other line is kept byte for byte; changed is false when the
// result equals the input.
func Add(corefile, domain, clusterDomain string) (out string, changed bool, err error) {
	ls := lines(corefile)
	if start, end, ok := find(ls); ok { // update in place
		indent := leading(ls[start])
		want := block(Rule(domain, clusterDomain), domain, clusterDomain, indent, eolOf(ls[start]))
		out = strings.Join(ls[:start], "") + want + strings.Join(ls[end+1:], "")
		return out, out != corefile, nil
	}
	open, first, ok := kubernetesBlock(ls)
	if !ok {
		return corefile, false, ErrNoKubernetesBlock
	}
	indent := "    "
	if first >= 0 {
		indent = leading(ls[first])
	}
	eol := eolOf(ls[open])
	if !strings.HasSuffix(ls[open], "\n") { // "{" on the file's last line without a newline
		ls[open] += "\n"
	}
	b := block(Rule(domain, clusterDomain), domain, clusterDomain, indent, eol)
	out = strings.Join(ls[:open+1], "") + b + strings.Join(ls[open+1:], "")
	return out, true, nil
}

// Remove returns corefile without the marked block; changed is false when
// there was none.
func Remove(corefile string) (out string, changed bool) {
	ls := lines(corefile)
	start, end, ok := find(ls)
	if !ok {
		return corefile, false
	}
	return strings.Join(ls[:start], "") + strings.Join(ls[end+1:], ""), true
}

// find locates the marked block: the BEGIN line through the END line.
func find(ls []string) (start, end int, ok bool) {
	start = -1
	for i, l := range ls {
		t := strings.TrimSpace(l)
		switch {
		case start < 0 && strings.HasPrefix(t, beginMarker):
			start = i
		case start >= 0 && t == endMarker:
			return start, i, true
		}
	}
	return 0, 0, false
}

// kubernetesBlock finds the opening line of the first top-level server
// block whose directives include kubernetes, and that block's first
// directive line (-1 if the block is empty).
func kubernetesBlock(ls []string) (open, first int, ok bool) {
	depth, cur, curFirst := 0, -1, -1
	for i, l := range ls {
		code := l
		if j := strings.IndexByte(code, '#'); j >= 0 {
			code = code[:j]
		}
		t := strings.TrimSpace(code)
		if depth == 1 && cur >= 0 && t != "" {
			if curFirst < 0 {
				curFirst = i
			}
			if f := strings.Fields(t); f[0] == "kubernetes" {
				return cur, curFirst, true
			}
		}
		opens, closes := strings.Count(t, "{"), strings.Count(t, "}")
		if depth == 0 && opens > 0 {
			cur, curFirst = i, -1
		}
		depth += opens - closes
		if depth <= 0 {
			depth, cur = 0, -1
		}
	}
	return 0, 0, false
}

func leading(l string) string { return l[:len(l)-len(strings.TrimLeft(l, " \t"))] }

func eolOf(l string) string {
	if strings.HasSuffix(l, "\r\n") {
		return "\r\n"
	}
	return "\n"
}
