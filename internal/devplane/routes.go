package devplane

import (
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// RouteTTL is how long a route lives without a register or sync refreshing
// it; the real control plane expires routes after about 24 h (§9.2).
const RouteTTL = 24 * time.Hour

// routesPart holds the route registry (protocol.md §9 from the control
// plane's side):
//
//	POST /api/v1/gateway/routes/register    one (host, path) route   (Bearer)
//	POST /api/v1/gateway/routes/sync        the cluster's full set   (Bearer)
//	POST /api/v1/gateway/routes/unregister  every route of a host    (Bearer)
//	GET    /admin/routes                    the registry and call counts (RouteRegistry)
//	DELETE /admin/routes                    empty the registry and the counts
//	PUT    /admin/routes/faults             answer the next N calls with a status (RouteFault)
//
// Success is 200 with {"status":"ok"}. A sync replaces the cluster's routes;
// an unregister names only a host and removes it from every cluster, as the
// body carries no cluster id.
type routesPart struct {
	routesMu    sync.Mutex
	routeTables map[string]*RouteCluster // by cluster_uuid
	routeCalls  map[string]int           // by operation, rejected calls included
	routeFault  RouteFault
}

// RouteEntry is one registered route.
type RouteEntry struct {
	protocol.RouteRegister
	Source    string    `json:"source"` // "register" or "sync"
	UpdatedAt time.Time `json:"updated_at"`
}

// RouteCluster is one cluster's routes and what its last sync said.
type RouteCluster struct {
	ClusterUUID       string                      `json:"cluster_uuid"`
	Routes            []RouteEntry                `json:"routes"`
	RoutingMode       string                      `json:"routing_mode,omitempty"`
	PublicEndpoint    string                      `json:"public_endpoint,omitempty"`
	IngressController *protocol.IngressController `json:"ingress_controller,omitempty"`
	Syncs             int                         `json:"syncs"`
	LastSync          time.Time                   `json:"last_sync,omitzero"`

	byKey map[string]RouteEntry // host NUL path
}

// RouteFault makes the next Count route calls (of Ops, or all when empty)
// answer Status, e.g. {"status":503,"count":3}.
type RouteFault struct {
	Status int      `json:"status"`
	Count  int      `json:"count"`
	Ops    []string `json:"ops,omitempty"` // "register", "sync", "unregister"
}

// RouteRegistry is the admin view: every cluster and the call counts.
type RouteRegistry struct {
	Clusters []RouteCluster `json:"clusters"`
	Calls    map[string]int `json:"calls"`
	Fault    RouteFault     `json:"fault"`
}

// registerRoutes adds the route registry's REST and admin endpoints.
func (s *Server) registerRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST "+protocol.PathRoutesRegister, s.routeHandler("register", s.applyRegister))
	mux.HandleFunc("POST "+protocol.PathRoutesSync, s.routeHandler("sync", s.applySync))
	mux.HandleFunc("POST "+protocol.PathRoutesUnregister, s.routeHandler("unregister", s.applyUnregister))
	mux.HandleFunc("GET /admin/routes", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.RouteRegistry())
	})
	mux.HandleFunc("DELETE /admin/routes", func(w http.ResponseWriter, r *http.Request) {
		s.ResetRoutes()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("PUT /admin/routes/faults", func(w http.ResponseWriter, r *http.Request) {
		var f RouteFault
		if err := json.NewDecoder(r.Body).Decode(&f); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		s.SetRouteFault(f)
		writeJSON(w, http.StatusOK, f)
	})
}

// routeHandler wraps one operation with auth, fault injection, body decoding
// and call counting.
func (s *Server) routeHandler(op string, apply func(body []byte) (int, string)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.routesMu.Lock()
		if s.routeCalls == nil {
			s.routeCalls = map[string]int{}
		}
		s.routeCalls[op]++
		s.routesMu.Unlock()
		if !s.CheckToken(r) {
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "invalid or missing bearer token"})
			return
		}
		if fault := s.takeRouteFault(op); fault != 0 {
			writeJSON(w, fault, map[string]string{"error": "injected fault"})
			return
		}
		body, err := io.ReadAll(io.LimitReader(r.Body, 64<<20))
		if err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		if code, msg := apply(body); code != http.StatusOK {
			writeJSON(w, code, map[string]string{"error": msg})
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	}
}

// takeRouteFault consumes one injected fault for op; 0 when none applies.
func (s *Server) takeRouteFault(op string) int {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	f := &s.routeFault
	if f.Count > 0 && (len(f.Ops) == 0 || slices.Contains(f.Ops, op)) {
		f.Count--
		return f.Status
	}
	return 0
}

func (s *Server) applyRegister(body []byte) (int, string) {
	var b protocol.RouteRegister
	if err := json.Unmarshal(body, &b); err != nil {
		return http.StatusBadRequest, "invalid JSON: " + err.Error()
	}
	if b.Hostname == "" || b.ClusterUUID == "" {
		return http.StatusBadRequest, "hostname and cluster_uuid are required"
	}
	if b.PathType == "" {
		b.PathType = "Prefix"
	}
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	c := s.routeClusterLocked(b.ClusterUUID)
	c.byKey[b.Hostname+"\x00"+b.Path] = RouteEntry{RouteRegister: b, Source: "register", UpdatedAt: time.Now()}
	return http.StatusOK, ""
}

func (s *Server) applySync(body []byte) (int, string) {
	var b protocol.RouteSync
	if err := json.Unmarshal(body, &b); err != nil {
		return http.StatusBadRequest, "invalid JSON: " + err.Error()
	}
	if b.ClusterUUID == "" {
		return http.StatusBadRequest, "cluster_uuid is required"
	}
	now := time.Now()
	routes := map[string]RouteEntry{}
	for _, ing := range b.Ingresses {
		for _, rule := range ing.Rules {
			for _, p := range rule.Paths {
				routes[rule.Host+"\x00"+p.Path] = RouteEntry{Source: "sync", UpdatedAt: now, RouteRegister: protocol.RouteRegister{
					Hostname: rule.Host, ClusterUUID: b.ClusterUUID, Namespace: controllerNamespace(b), ServiceName: p.ServiceName,
					ServicePort: p.ServicePort, IngressName: ing.IngressName, Path: p.Path, PathType: p.PathType, TLS: rule.TLS,
					Annotations: ing.Annotations, PublicEndpoint: b.PublicEndpoint, RoutingMode: b.RoutingMode,
				}}
			}
		}
	}
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	c := s.routeClusterLocked(b.ClusterUUID)
	c.byKey = routes
	c.RoutingMode, c.PublicEndpoint, c.IngressController = b.RoutingMode, b.PublicEndpoint, b.IngressController
	c.Syncs++
	c.LastSync = now
	return http.StatusOK, ""
}

// controllerNamespace is where a synced route's service lives: the controller's namespace.
func controllerNamespace(b protocol.RouteSync) string {
	if b.IngressController != nil {
		return b.IngressController.Namespace
	}
	return ""
}

func (s *Server) applyUnregister(body []byte) (int, string) {
	var b protocol.RouteUnregister
	if err := json.Unmarshal(body, &b); err != nil {
		return http.StatusBadRequest, "invalid JSON: " + err.Error()
	}
	if b.Hostname == "" {
		return http.StatusBadRequest, "hostname is required"
	}
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	for _, c := range s.routeTables {
		maps.DeleteFunc(c.byKey, func(_ string, e RouteEntry) bool { return e.Hostname == b.Hostname })
	}
	return http.StatusOK, ""
}

func (s *Server) routeClusterLocked(id string) *RouteCluster {
	if s.routeTables == nil {
		s.routeTables = map[string]*RouteCluster{}
	}
	c := s.routeTables[id]
	if c == nil {
		c = &RouteCluster{ClusterUUID: id, byKey: map[string]RouteEntry{}}
		s.routeTables[id] = c
	}
	return c
}

// Routes returns a cluster's live routes, sorted by host then path.
func (s *Server) Routes(clusterID string) []RouteEntry {
	c, _ := s.RouteCluster(clusterID)
	return c.Routes
}

// RouteCluster returns a copy of one cluster's route table.
func (s *Server) RouteCluster(clusterID string) (RouteCluster, bool) {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	c, ok := s.routeTables[clusterID]
	if !ok {
		return RouteCluster{ClusterUUID: clusterID}, false
	}
	return c.snapshotLocked(), true
}

func (c *RouteCluster) snapshotLocked() RouteCluster {
	out := *c
	out.byKey = nil
	out.Routes = []RouteEntry{}
	cutoff := time.Now().Add(-RouteTTL)
	for _, e := range c.byKey {
		if e.UpdatedAt.After(cutoff) {
			out.Routes = append(out.Routes, e)
		}
	}
	slices.SortFunc(out.Routes, func(a, b RouteEntry) int {
		if c := strings.Compare(a.Hostname, b.Hostname); c != 0 {
			return c
		}
		return strings.Compare(a.Path, b.Path)
	})
	return out
}

// LookupRoute finds the cluster serving host (a front door may route by it).
func (s *Server) LookupRoute(host string) (RouteEntry, bool) {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	cutoff := time.Now().Add(-RouteTTL)
	for _, c := range s.routeTables {
		for _, e := range c.byKey {
			if e.Hostname == host && e.UpdatedAt.After(cutoff) {
				return e, true
			}
		}
	}
	return RouteEntry{}, false
}

// RouteRegistry is the admin snapshot.
func (s *Server) RouteRegistry() RouteRegistry {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	out := RouteRegistry{Clusters: []RouteCluster{}, Calls: maps.Clone(s.routeCalls), Fault: s.routeFault}
	if out.Calls == nil {
		out.Calls = map[string]int{}
	}
	for _, id := range slices.Sorted(maps.Keys(s.routeTables)) {
		out.Clusters = append(out.Clusters, s.routeTables[id].snapshotLocked())
	}
	return out
}

// RouteCalls returns how many route calls of each operation arrived.
func (s *Server) RouteCalls() map[string]int {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	return maps.Clone(s.routeCalls)
}

// SetRouteFault replaces the route fault (zero value: none).
func (s *Server) SetRouteFault(f RouteFault) {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	s.routeFault = f
}

// ResetRoutes empties the registry and the call counts.
func (s *Server) ResetRoutes() {
	s.routesMu.Lock()
	defer s.routesMu.Unlock()
	s.routeTables, s.routeCalls, s.routeFault = nil, nil, RouteFault{}
}
