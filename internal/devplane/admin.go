package devplane

import (
	"encoding/json"
	"net/http"
)

// registerAdmin adds the admin JSON API:
//
//	GET    /admin/clusters                 every cluster (ClusterInfo)
//	GET    /admin/clusters/{id}            one cluster
//	DELETE /admin/clusters/{id}            forget it ("cluster not found" next)
//	POST   /admin/clusters/{id}/garbage    send a non-JSON text frame
//	POST   /admin/clusters/{id}/error      send `error` with body {"error":"…"}
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
