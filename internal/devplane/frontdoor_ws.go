package devplane

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/gorilla/websocket"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// FrontDoorOptions choose how the front door relays kubectl's WebSockets
// (exec, attach, port-forward). The zero value is the raw-frames path.
type FrontDoorOptions struct {
	// Translated relays the way the PipeOps control plane does: a
	// proxy_request with is_websocket (§6.3 rule 2), proxy_websocket_data
	// and proxy_websocket_close, and the agent's §6.8 channel translation.
	// That translation drops the channel byte of stdout, stderr and the
	// status channel, so the front door sends text back on stdout, except a
	// trailing metav1.Status, which goes back on the status channel: stderr
	// arrives merged into stdout. Without Translated the front door uses
	// ws_start with raw_frames and every frame passes unchanged.
	Translated bool
	// Version, "v4" or "v5", is the *.channel.k8s.io subprotocol the agent
	// asks the API server for, whatever the client chose; empty asks for the
	// client's choice. kubectl offers only v5 over WebSocket, and v5 is v4
	// plus a stdin-close signal (channel 255), so with "v4" the front door
	// drops that signal and relays everything else unchanged. Other
	// subprotocols (port-forward's SPDY/3.1+portforward.k8s.io) are kept.
	Version string
}

// door is the path segment after the cluster id: "k8s", then "-translated",
// "-v4" or "-v5" as set.
func (o FrontDoorOptions) door() string {
	d := "k8s"
	if o.Translated {
		d += "-translated"
	}
	if o.Version != "" {
		d += "-" + o.Version
	}
	return d
}

// parseDoor is door's inverse.
func parseDoor(d string) (FrontDoorOptions, bool) {
	parts := strings.Split(d, "-")
	var o FrontDoorOptions
	if parts[0] != "k8s" {
		return o, false
	}
	for _, p := range parts[1:] {
		switch {
		case p == "translated" && !o.Translated:
			o.Translated = true
		case (p == "v4" || p == "v5") && o.Version == "":
			o.Version = p
		default:
			return o, false
		}
	}
	return o, true
}

// subprotocols: there is no message that carries the API server's choice
// back, so the front door takes the client's first offer and asks the agent
// for exactly that one (or for version's channel protocol); the API server
// accepts it or the dial fails.
func subprotocols(offered []string, version string) (client []string, agent string) {
	if len(offered) == 0 {
		return nil, ""
	}
	agent = offered[0]
	if version != "" && strings.HasSuffix(agent, ".channel.k8s.io") {
		agent = version + ".channel.k8s.io"
	}
	return offered[:1], agent
}

// closeSignal is v5.channel.k8s.io's "close this stream" frame (channel 255).
func closeSignal(mt int, data []byte) bool {
	return mt == websocket.BinaryMessage && len(data) > 0 && data[0] == 255
}

// frontDoorWebSocket relays kubectl exec/attach/port-forward (kubectl ≥1.30
// speaks WebSocket by default: v5.channel.k8s.io for exec/attach, and SPDY
// tunnelled in WebSocket frames for port-forward) through the agent (§6.8),
// on the raw-frames path or the translated one (FrontDoorOptions).
func (s *Server) frontDoorWebSocket(w http.ResponseWriter, r *http.Request, sess *Session, path string, opts FrontDoorOptions) {
	chosen, proto := subprotocols(websocket.Subprotocols(r), opts.Version)
	dropClose := len(chosen) > 0 && chosen[0] == "v5.channel.k8s.io" && proto != chosen[0]
	streamID := s.nextRequestID()
	msgs, unsubscribe := sess.Subscribe(streamID)
	defer unsubscribe()
	h := protocol.Headers{}
	for k, v := range r.Header {
		if !hopByHop[k] && !strings.HasPrefix(k, "Sec-Websocket-") {
			h[k] = v
		}
	}
	// The PipeOps control plane's messages, or the reference's own (§4.4, §5.1).
	dataType, closeType := protocol.TypeWSData, protocol.TypeWSClose
	var err error
	if opts.Translated {
		dataType, closeType = protocol.TypeProxyWebSocketData, protocol.TypeProxyWebSocketClose
		err = sess.Send(r.Context(), protocol.TypeProxyRequest, streamID, protocol.ProxyRequest{
			Method: http.MethodGet, Path: path, Query: r.URL.RawQuery, Headers: h,
			IsWebSocket: true, Protocol: proto, SupportsStreaming: true, SupportsResponseStreaming: true})
	} else {
		err = sess.Send(r.Context(), protocol.TypeWSStart, streamID, protocol.WebSocketStart{StreamID: streamID,
			Method: http.MethodGet, Path: path, Query: r.URL.RawQuery, Protocol: proto, Headers: h, RawFrames: true})
	}
	if err != nil {
		http.Error(w, "send the relay start to the agent: "+err.Error(), http.StatusBadGateway)
		return
	}
	closeAgent := func() {
		_ = sess.Send(context.Background(), closeType, streamID, protocol.WebSocketClose{StreamID: streamID})
	}
	up := websocket.Upgrader{Subprotocols: chosen, CheckOrigin: func(*http.Request) bool { return true },
		ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
	client, err := up.Upgrade(w, r, nil)
	if err != nil {
		closeAgent()
		return
	}
	defer client.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { // client → agent
		defer cancel()
		for {
			mt, data, err := client.ReadMessage()
			if err != nil {
				closeAgent()
				return
			}
			if dropClose && closeSignal(mt, data) {
				continue // the agent's protocol has no such signal
			}
			frame := append([]byte{byte(mt)}, data...)
			d := protocol.WebSocketData{StreamID: streamID, Data: base64.StdEncoding.EncodeToString(frame)}
			if sess.Send(ctx, dataType, streamID, d) != nil {
				return
			}
		}
	}()
	closeClient := func(code int, text string) {
		if len(text) > 120 { // a close reason must fit in a control frame
			text = text[:120]
		}
		_ = client.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
	}
	write := func(op int, b []byte) bool {
		_ = client.SetWriteDeadline(time.Now().Add(30 * time.Second))
		return client.WriteMessage(op, b) == nil
	}
	var status []byte // translated: a metav1.Status held back until the next frame or the end
	for {             // agent → client
		var env *protocol.Envelope
		var ok bool
		select {
		case env, ok = <-msgs:
		case <-ctx.Done():
			return
		}
		if !ok {
			closeClient(websocket.CloseGoingAway, "agent session ended")
			return
		}
		switch env.Type {
		case protocol.TypeProxyResponse, protocol.TypeProxyResponseHeader: // translated: the answer to proxy_request (§6.3 rule 2)
			var st struct {
				Status int `json:"status"`
			}
			_ = env.DecodePayload(&st)
			if st.Status != http.StatusOK && st.Status != http.StatusSwitchingProtocols {
				closeClient(websocket.CloseInternalServerErr, fmt.Sprintf("agent answered the relay with status %d", st.Status))
				return
			}
		case protocol.TypeProxyWebSocketData:
			var d protocol.WebSocketData
			_ = env.DecodePayload(&d)
			raw, err := base64.StdEncoding.DecodeString(d.Data)
			if err != nil || len(raw) == 0 {
				continue
			}
			op, payload := int(raw[0]), raw[1:]
			if opts.Translated && op == websocket.TextMessage && strings.HasSuffix(proto, ".channel.k8s.io") {
				if status != nil && !write(websocket.BinaryMessage, append([]byte{1}, status...)) {
					return
				}
				status = nil
				if isStatus(payload) {
					status = payload
					continue
				}
				op, payload = websocket.BinaryMessage, append([]byte{1}, payload...) // stdout
			}
			if !write(op, payload) {
				return
			}
		case protocol.TypeProxyWebSocketClose:
			if status != nil && !write(websocket.BinaryMessage, append([]byte{3}, status...)) {
				return
			}
			closeClient(websocket.CloseNormalClosure, "")
			return
		case protocol.TypeProxyError, protocol.TypeProxyResponseAbort:
			var e protocol.ErrorPayload
			_ = env.DecodePayload(&e)
			s.log.Info("front door relay failed", "stream_id", streamID, "err", e.Error)
			closeClient(websocket.CloseInternalServerErr, e.Error)
			return
		}
	}
}

// isStatus reports whether b is a metav1.Status, as the API server sends on
// the status channel when an exec or attach ends.
func isStatus(b []byte) bool {
	var st struct {
		Kind   string `json:"kind"`
		Status string `json:"status"`
	}
	if !bytes.HasPrefix(b, []byte("{")) || json.Unmarshal(b, &st) != nil {
		return false
	}
	return (st.Kind == "" || st.Kind == "Status") && (st.Status == "Success" || st.Status == "Failure")
}

// decodeResponseBody undoes the §4.3 encodings.
func decodeResponseBody(body, enc string) ([]byte, error) {
	if body == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(body)
	if err != nil {
		return nil, err
	}
	if enc == "gzip" {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	}
	return b, nil
}

// FrontDoorURL is the kubectl --server URL for a cluster behind base (the
// server's public base URL).
func FrontDoorURL(base, clusterID string) string {
	return FrontDoorURLWith(base, clusterID, FrontDoorOptions{})
}

// FrontDoorURLWith is FrontDoorURL with relay options.
func FrontDoorURLWith(base, clusterID string, o FrontDoorOptions) string {
	return strings.TrimSuffix(base, "/") + FrontDoorPrefix + clusterID + "/" + o.door()
}

// FrontDoorKubeconfig is a kubeconfig that points kubectl and helm at the
// front door of one cluster. With an empty token the agent's own
// ServiceAccount identity is used; a token is passed through to the API
// server verbatim.
func FrontDoorKubeconfig(base, clusterID, token string) []byte {
	return FrontDoorKubeconfigWith(base, clusterID, token, FrontDoorOptions{})
}

// FrontDoorKubeconfigWith is FrontDoorKubeconfig with relay options.
func FrontDoorKubeconfigWith(base, clusterID, token string, o FrontDoorOptions) []byte {
	name := "pipeops-" + clusterID
	user := "  user: {}\n"
	if token != "" {
		user = fmt.Sprintf("  user:\n    token: %q\n", token)
	}
	return []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: %[2]q
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[1]s
current-context: %[1]s
users:
- name: %[1]s
%[3]s`, name, FrontDoorURLWith(base, clusterID, o), user))
}

// serveKubeconfig answers GET /admin/frontdoor/kubeconfig?cluster_id=…
// (default: the only connected cluster); &relay=translated and &version=v4
// or v5 choose FrontDoorOptions.
func (s *Server) serveKubeconfig(w http.ResponseWriter, r *http.Request) {
	id := r.URL.Query().Get("cluster_id")
	if id == "" {
		for _, c := range s.Clusters() {
			if c.Connected {
				id = c.ID
				break
			}
		}
	}
	if id == "" {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no connected cluster; pass ?cluster_id="})
		return
	}
	base := s.cfg.PublicURL
	if base == "" {
		base = "http://" + r.Host
	}
	q := r.URL.Query()
	o := FrontDoorOptions{Translated: q.Get("relay") == "translated", Version: q.Get("version")}
	if _, ok := parseDoor(o.door()); !ok || (q.Get("relay") != "" && q.Get("relay") != "translated" && q.Get("relay") != "raw") {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "relay is raw or translated; version is v4 or v5"})
		return
	}
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(FrontDoorKubeconfigWith(base, id, q.Get("token"), o))
}

func init() {
	// --kubeconfig-out writes a front-door kubeconfig as soon as an agent
	// registers, and prints the kubectl command that uses it.
	RegisterFlags(func(fs *flag.FlagSet) func(*Server) error {
		out := fs.String("kubeconfig-out", "", "write a kubeconfig for the first registered cluster's front door (/clusters/<id>/k8s) to this file")
		return func(s *Server) error {
			if *out != "" {
				go s.writeKubeconfigWhenRegistered(*out)
			}
			return nil
		}
	})
}

// writeKubeconfigWhenRegistered polls for the first cluster and writes its
// front-door kubeconfig once.
func (s *Server) writeKubeconfigWhenRegistered(path string) {
	for {
		for _, c := range s.Clusters() {
			b := FrontDoorKubeconfig(s.cfg.PublicURL, c.ID, "")
			if err := os.WriteFile(path, b, 0o600); err != nil {
				s.log.Error("write front-door kubeconfig", "path", path, "err", err)
				return
			}
			s.log.Info("front-door kubeconfig written", "path", path, "cluster_id", c.ID,
				"try", "kubectl --kubeconfig "+path+" get namespaces")
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}
