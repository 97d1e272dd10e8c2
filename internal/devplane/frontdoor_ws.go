package devplane

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/base64"
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

// frontDoorWebSocket relays kubectl exec/attach/port-forward (kubectl ≥1.30
// speaks WebSocket by default: v5.channel.k8s.io for exec/attach, and SPDY
// tunnelled in WebSocket frames for port-forward) over ws_start, ws_data and
// ws_close (§6.8). It sets raw_frames so the agent keeps the channel byte
// that real kubectl needs; the PipeOps control plane instead lets the agent
// translate channels for its web terminal.
func (s *Server) frontDoorWebSocket(w http.ResponseWriter, r *http.Request, sess *Session, path string) {
	offered := websocket.Subprotocols(r)
	// There is no message that carries the API server's choice back, so the
	// front door picks the client's first offer and asks the agent for
	// exactly that one; the API server accepts it or the dial fails.
	var chosen []string
	if len(offered) > 0 {
		chosen = offered[:1]
	}
	streamID := s.nextRequestID()
	msgs, unsubscribe := sess.Subscribe(streamID)
	defer unsubscribe()
	h := protocol.Headers{}
	for k, v := range r.Header {
		if !hopByHop[k] && !strings.HasPrefix(k, "Sec-Websocket-") {
			h[k] = v
		}
	}
	start := protocol.WebSocketStart{StreamID: streamID, Method: http.MethodGet, Path: path, Query: r.URL.RawQuery,
		Protocol: strings.Join(chosen, ","), Headers: h, RawFrames: true}
	if err := sess.Send(r.Context(), protocol.TypeWSStart, streamID, start); err != nil {
		http.Error(w, "send ws_start to the agent: "+err.Error(), http.StatusBadGateway)
		return
	}
	up := websocket.Upgrader{Subprotocols: chosen, CheckOrigin: func(*http.Request) bool { return true },
		ReadBufferSize: 32 << 10, WriteBufferSize: 32 << 10}
	client, err := up.Upgrade(w, r, nil)
	if err != nil {
		_ = sess.Send(context.Background(), protocol.TypeWSClose, streamID, protocol.WebSocketClose{StreamID: streamID})
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
				_ = sess.Send(context.Background(), protocol.TypeWSClose, streamID, protocol.WebSocketClose{StreamID: streamID})
				return
			}
			frame := append([]byte{byte(mt)}, data...)
			d := protocol.WebSocketData{StreamID: streamID, Data: base64.StdEncoding.EncodeToString(frame)}
			if sess.Send(ctx, protocol.TypeWSData, streamID, d) != nil {
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
	for { // agent → client
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
		case protocol.TypeProxyWebSocketData:
			var d protocol.WebSocketData
			_ = env.DecodePayload(&d)
			raw, err := base64.StdEncoding.DecodeString(d.Data)
			if err != nil || len(raw) == 0 {
				continue
			}
			_ = client.SetWriteDeadline(time.Now().Add(30 * time.Second))
			if client.WriteMessage(int(raw[0]), raw[1:]) != nil {
				return
			}
		case protocol.TypeProxyWebSocketClose:
			closeClient(websocket.CloseNormalClosure, "")
			return
		case protocol.TypeProxyError:
			var e protocol.ErrorPayload
			_ = env.DecodePayload(&e)
			s.log.Info("front door relay failed", "stream_id", streamID, "err", e.Error)
			closeClient(websocket.CloseInternalServerErr, e.Error)
			return
		}
	}
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
	return strings.TrimSuffix(base, "/") + FrontDoorPrefix + clusterID + "/k8s"
}

// FrontDoorKubeconfig is a kubeconfig that points kubectl and helm at the
// front door of one cluster. With an empty token the agent's own
// ServiceAccount identity is used; a token is passed through to the API
// server verbatim.
func FrontDoorKubeconfig(base, clusterID, token string) []byte {
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
%[3]s`, name, FrontDoorURL(base, clusterID), user))
}

// serveKubeconfig answers GET /admin/frontdoor/kubeconfig?cluster_id=…
// (default: the only connected cluster).
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
	w.Header().Set("Content-Type", "application/yaml")
	_, _ = w.Write(FrontDoorKubeconfig(base, id, r.URL.Query().Get("token")))
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
