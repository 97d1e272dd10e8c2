package dashboard

import (
	"bytes"
	"crypto/sha256"
	_ "embed" // the page
	"encoding/base64"
	"strings"
)

// pageHTML is the whole dashboard: markup, style and script in one file.
//
//go:embed dashboard.html
var pageHTML []byte

// transportsMarker is replaced by the transports this agent serves.
const transportsMarker = "__TRANSPORTS__"

// renderPage fills in the transports and returns the page with a Content
// Security Policy that allows exactly its own inline script and style (by
// hash), same-origin connections, and nothing from anywhere else.
func renderPage(sse, ws bool) ([]byte, string) {
	var t []string
	if sse {
		t = append(t, "sse")
	}
	if ws {
		t = append(t, "ws")
	}
	t = append(t, "poll")
	page := bytes.Replace(pageHTML, []byte(transportsMarker), []byte(strings.Join(t, " ")), 1)
	csp := "default-src 'none'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'" +
		"; script-src " + inlineHash(page, "<script>", "</script>") +
		"; style-src " + inlineHash(page, "<style>", "</style>")
	return page, csp
}

// inlineHash is the CSP source for the one inline block between open and close.
func inlineHash(page []byte, open, close string) string {
	_, rest, ok := bytes.Cut(page, []byte(open))
	if !ok {
		return "'none'"
	}
	body, _, ok := bytes.Cut(rest, []byte(close))
	if !ok {
		return "'none'"
	}
	sum := sha256.Sum256(body)
	return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
}
