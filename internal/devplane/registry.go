package devplane

import (
	"context"
	"encoding/json"
	"maps"
	"net/http"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// cluster is what the server remembers about one registered cluster.
type cluster struct {
	info ClusterInfo
	// serviceToken is the last k8s_service_token: what a real control plane
	// keeps to reach the cluster's API server (protocol.md §14.3). Never in
	// ClusterInfo, so the admin API does not show it.
	serviceToken string
}

// ServiceToken is the k8s_service_token of the cluster's last register
// ("" when none): tests use it as the control plane would.
func (s *Server) ServiceToken(clusterID string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusters[clusterID]; c != nil {
		return c.serviceToken
	}
	return ""
}

// ClusterInfo is one cluster as the admin API shows it.
type ClusterInfo struct {
	ID            string `json:"cluster_id"`
	AgentID       string `json:"agent_id"`
	Name          string `json:"name"`
	K8sVersion    string `json:"k8s_version"`
	AgentVersion  string `json:"agent_version"`
	Registrations int    `json:"registrations"`
	// LastRegister is the last register payload, k8s_service_token removed.
	LastRegister json.RawMessage `json:"last_register,omitempty"`
	RegisteredAt time.Time       `json:"registered_at"`
	// Connected and Mode ("controller"|"gateway") describe the live session.
	Connected   bool      `json:"connected"`
	Mode        string    `json:"mode,omitempty"`
	ConnectedAt time.Time `json:"connected_at,omitzero"`
	Connections int       `json:"connections"`
	// LastCloseCode is the close code of the last session the agent ended
	// (1000 on a clean shutdown, 1006 when the socket just dropped).
	LastCloseCode int `json:"last_close_code,omitempty"`
	// GatewayQuery is the query of the last gateway handshake.
	GatewayQuery    map[string]string `json:"gateway_query,omitempty"`
	Heartbeats      int               `json:"heartbeats"`
	LastHeartbeat   json.RawMessage   `json:"last_heartbeat,omitempty"`
	LastHeartbeatAt time.Time         `json:"last_heartbeat_at,omitzero"`
	// Other counts inbound messages by type that nobody handled.
	Other map[string]int `json:"other,omitempty"`
}

// Heartbeat decodes LastHeartbeat (zero value when none yet).
func (c ClusterInfo) Heartbeat() protocol.Heartbeat {
	var hb protocol.Heartbeat
	_ = json.Unmarshal(c.LastHeartbeat, &hb)
	return hb
}

func (s *Server) recordRegistration(id string, reg *protocol.Register, raw json.RawMessage) {
	redacted := map[string]any{}
	_ = json.Unmarshal(raw, &redacted)
	if _, ok := redacted["k8s_service_token"]; ok {
		redacted["k8s_service_token"] = "[redacted]"
	}
	b, _ := json.Marshal(redacted)
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[id]
	if c == nil {
		c = &cluster{info: ClusterInfo{ID: id}}
		s.clusters[id] = c
	}
	c.info.AgentID, c.info.Name = reg.AgentID, reg.Name
	c.info.K8sVersion, c.info.AgentVersion = reg.K8sVersion, reg.AgentVersion
	c.info.Registrations++
	c.info.LastRegister = b
	c.serviceToken = reg.K8sServiceToken
	c.info.RegisteredAt = time.Now()
}

func (s *Server) knownCluster(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return id != "" && s.clusters[id] != nil
}

// attach makes sess the cluster's live session, ending an older one.
func (s *Server) attach(sess *Session, gatewayQuery map[string]string) {
	id := sess.ClusterID()
	s.mu.Lock()
	old := s.sessions[id]
	s.sessions[id] = sess
	if c := s.clusters[id]; c != nil {
		c.info.Connected, c.info.Mode, c.info.ConnectedAt = true, sess.Kind(), time.Now()
		c.info.Connections++
		if gatewayQuery != nil {
			c.info.GatewayQuery = gatewayQuery
		}
	}
	for _, w := range s.waiters[id] {
		close(w)
	}
	delete(s.waiters, id)
	s.mu.Unlock()
	if old != nil && old != sess {
		old.Close()
	}
}

func (s *Server) detach(sess *Session, closeCode int) {
	id := sess.ClusterID()
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusters[id]; c != nil && closeCode != 0 {
		c.info.LastCloseCode = closeCode
	}
	if s.sessions[id] != sess {
		return
	}
	delete(s.sessions, id)
	if c := s.clusters[id]; c != nil {
		c.info.Connected, c.info.Mode = false, ""
	}
}

// recordHeartbeat stores a heartbeat; false when its cluster is unknown.
func (s *Server) recordHeartbeat(sess *Session, raw json.RawMessage) bool {
	var hb struct {
		ClusterID string `json:"cluster_id"`
	}
	_ = json.Unmarshal(raw, &hb)
	id := hb.ClusterID
	if id == "" {
		id = sess.ClusterID()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[id]
	if c == nil {
		return false
	}
	c.info.Heartbeats++
	c.info.LastHeartbeat = append(json.RawMessage(nil), raw...)
	c.info.LastHeartbeatAt = time.Now()
	return true
}

func (s *Server) recordOther(sess *Session, env *protocol.Envelope) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c := s.clusters[sess.ClusterID()]; c != nil {
		if c.info.Other == nil {
			c.info.Other = map[string]int{}
		}
		c.info.Other[env.Type]++
	}
}

// Session is the cluster's live agent session, or nil.
func (s *Server) Session(clusterID string) *Session {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sessions[clusterID]
}

// WaitSession waits until the cluster has a live session.
func (s *Server) WaitSession(ctx context.Context, clusterID string) (*Session, error) {
	for {
		s.mu.Lock()
		if sess := s.sessions[clusterID]; sess != nil {
			s.mu.Unlock()
			return sess, nil
		}
		w := make(chan struct{})
		s.waiters[clusterID] = append(s.waiters[clusterID], w)
		s.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// Clusters lists every known cluster.
func (s *Server) Clusters() []ClusterInfo {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ClusterInfo, 0, len(s.clusters))
	for _, c := range s.clusters {
		out = append(out, c.snapshot())
	}
	return out
}

// snapshot copies the info, maps included: callers read it while sessions
// keep counting.
func (c *cluster) snapshot() ClusterInfo {
	info := c.info
	info.Other = maps.Clone(c.info.Other)
	info.GatewayQuery = maps.Clone(c.info.GatewayQuery)
	return info
}

// Cluster returns one cluster by id.
func (s *Server) Cluster(id string) (ClusterInfo, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusters[id]
	if c == nil {
		return ClusterInfo{}, false
	}
	return c.snapshot(), true
}

// registerAdmin adds the admin JSON API:
//
//	GET    /admin/clusters                 every cluster (ClusterInfo)
//	GET    /admin/clusters/{id}            one cluster
//	DELETE /admin/clusters/{id}            forget it ("cluster not found" next)
//	POST   /admin/clusters/{id}/garbage    send a non-JSON text frame
//	POST   /admin/clusters/{id}/error      send `error` with body {"error":"…"}
//	POST   /admin/clusters/{id}/send       send any envelope: body {"type","request_id","payload"}
//	GET    /admin/wire                     agent messages seen by type, and spec violations (wirespec.go)
//	GET    /admin/faults, PUT /admin/faults  handshake faults (Faults)
//	POST   /admin/drop                     drop every session without a close frame
//
// The admin API has no authentication: bind it to loopback.
func (s *Server) registerAdmin(mux *http.ServeMux) {
	mux.HandleFunc("GET /admin/clusters", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Clusters())
	})
	mux.HandleFunc("GET /admin/clusters/{id}", func(w http.ResponseWriter, r *http.Request) {
		c, ok := s.Cluster(r.PathValue("id"))
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "cluster not found"})
			return
		}
		writeJSON(w, http.StatusOK, c)
	})
	mux.HandleFunc("DELETE /admin/clusters/{id}", func(w http.ResponseWriter, r *http.Request) {
		s.Forget(r.PathValue("id"))
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/clusters/{id}/garbage", func(w http.ResponseWriter, r *http.Request) {
		if err := s.SendGarbage(r.Context(), r.PathValue("id")); err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/clusters/{id}/error", func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			Error string `json:"error"`
		}
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil || body.Error == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": `body must be {"error":"…"}`})
			return
		}
		if err := s.SendError(r.Context(), r.PathValue("id"), body.Error); err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /admin/clusters/{id}/send", func(w http.ResponseWriter, r *http.Request) {
		var env struct {
			Type      string          `json:"type"`
			RequestID string          `json:"request_id"`
			Payload   json.RawMessage `json:"payload"`
		}
		if err := json.NewDecoder(r.Body).Decode(&env); err != nil || env.Type == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": `body must be {"type":"…","request_id":"…","payload":{…}}`})
			return
		}
		sess := s.Session(r.PathValue("id"))
		if sess == nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": "cluster has no live session"})
			return
		}
		payload := env.Payload
		if len(payload) == 0 {
			payload = json.RawMessage("{}")
		}
		if err := sess.Send(r.Context(), env.Type, env.RequestID, payload); err != nil {
			writeJSON(w, http.StatusConflict, map[string]string{"error": err.Error()})
			return
		}
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /admin/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.GetFaults())
	})
	mux.HandleFunc("PUT /admin/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Faults
		if err := json.NewDecoder(r.Body).Decode(&f); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, f)
	})
	mux.HandleFunc("POST /admin/drop", func(w http.ResponseWriter, r *http.Request) {
		s.DropAll()
		w.WriteHeader(http.StatusNoContent)
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
