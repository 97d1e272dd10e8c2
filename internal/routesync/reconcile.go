package routesync

import (
	"context"
	"maps"
	"slices"
	"time"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"

	"github.com/pipeops/pipeops-vm-agent/internal/logging"
	"github.com/pipeops/pipeops-vm-agent/internal/protocol"
)

// processNext handles one queue key; false once the queue shuts down.
func (s *Syncer) processNext(ctx context.Context) bool {
	s.lp.Idle()
	key, quit := s.q.Get()
	s.lp.Busy()
	if quit || ctx.Err() != nil {
		if !quit {
			s.q.Done(key)
		}
		return false
	}
	defer s.q.Done(key)
	defer func() {
		if p := recover(); p != nil { // never let one bad object stop route sync
			s.log.Error("route sync: recovered from panic", "key", key, logging.KeyPanic, p)
		}
	}()
	switch key {
	case detectKey:
		s.detect()
	case fullSyncKey:
		s.fullSync(ctx)
	default:
		s.syncIngress(ctx, key)
	}
	return true
}

// rest runs one REST call (with its retries and 30 s timeouts) as a wait
// of the watched loop, not a step: a slow control plane is not a hung agent.
func (s *Syncer) rest(call func() error) error {
	s.lp.Idle()
	defer s.lp.Busy()
	return call()
}

// pendingFull reports whether a full sync was asked for and not yet done.
// While one is pending, single-ingress calls are skipped: the full sync
// sends the current state of every ingress anyway.
func (s *Syncer) pendingFull() bool { return s.fullGen.Load() > s.doneGen }

// detect re-evaluates the controller and the routing mode; a change needs a
// full sync, since every route carries both.
func (s *Syncer) detect() {
	ctrl := detectController(s.cache, s.opt.ControllerCandidates, s.opt.LabelNamespaces)
	rt := detectRouting(s.cache, s.opt.RoutingCandidates, s.opt.ForceTunnel)
	s.mu.Lock()
	changed := ctrl != s.ctrl || rt != s.rt
	s.ctrl, s.rt = ctrl, rt
	first := ctrl.found() && !s.ctrlSeen
	s.ctrlSeen = s.ctrlSeen || ctrl.found()
	s.mu.Unlock()
	if first || changed {
		s.log.Info("ingress controller detected", "controller", ctrl.String(), logging.KeyRoutingMode, rt.Mode,
			"public_endpoint", rt.PublicEndpoint)
	}
	if !ctrl.found() && time.Since(s.start) < s.opt.DetectTimeout {
		s.q.AddAfter(detectKey, s.opt.DetectInterval) // poll as well as watch, as §9.3 asks
	}
	if changed {
		s.Resync()
	}
}

// fullSync sends the whole route set (§9.1 sync), an empty list included.
func (s *Syncer) fullSync(ctx context.Context) {
	gen := s.fullGen.Load()
	if gen <= s.doneGen {
		return // served already (a delayed retry of an older request)
	}
	desired := s.computeAll()
	clusterID := s.opt.ClusterID()
	s.mu.RLock()
	ctrl, rt := s.ctrl, s.rt
	s.mu.RUnlock()
	switch {
	case clusterID == "":
		s.setHealth(false, "waiting for a cluster id from registration")
		s.q.AddAfter(fullSyncKey, time.Second)
		return
	case !ctrl.found() && time.Since(s.start) < s.opt.DetectTimeout:
		s.setHealth(false, "waiting for an ingress controller Service")
		s.q.AddAfter(fullSyncKey, s.opt.DetectInterval)
		return
	}
	body := syncBody(clusterID, ctrl, rt, desired)
	err := s.rest(func() error { return s.client.Sync(ctx, body) })
	s.record(OpSync, err)
	if err != nil {
		if ctx.Err() != nil {
			return
		}
		delay := s.bo.Next()
		if IsPermanent(err) {
			delay = s.opt.PermanentRetry
		}
		s.log.Warn("route sync failed; retrying", logging.KeyErr, err, logging.KeyDelay, delay.Round(time.Millisecond))
		s.q.AddAfter(fullSyncKey, delay)
		return
	}
	s.bo.Reset()
	s.doneGen = gen
	s.reg, s.regHosts = map[string]map[string]route{}, map[string]map[string]int{}
	n := 0
	for _, rs := range desired {
		for _, r := range rs {
			s.regPut(r)
			n++
		}
	}
	s.log.Info("routes synced", logging.KeyIngresses, len(body.Ingresses), "routes", n, logging.KeyRoutingMode, rt.Mode)
}

// computeAll reads every managed ingress from the cache and makes it the desired state.
func (s *Syncer) computeAll() map[string][]route {
	all := map[string][]route{}
	ings, _ := s.cache.ingL.List(labels.Everything())
	for _, ing := range ings {
		if rs := extractRoutes(ing, s.cache.get); len(rs) > 0 {
			all[ing.Namespace+"/"+ing.Name] = rs
		}
	}
	s.mu.Lock()
	s.desired, s.hosts, s.nRoutes = map[string][]route{}, map[string]int{}, 0
	for k, rs := range all {
		s.setDesiredLocked(k, rs)
	}
	s.mu.Unlock()
	return all
}

// computeOne refreshes the desired routes of one ingress.
func (s *Syncer) computeOne(key string) []route {
	var rs []route
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err == nil {
		if ing, err := s.cache.ingL.Ingresses(ns).Get(name); err == nil {
			rs = extractRoutes(ing, s.cache.get)
		}
	}
	s.mu.Lock()
	s.setDesiredLocked(key, rs)
	s.mu.Unlock()
	return rs
}

func (s *Syncer) setDesiredLocked(key string, rs []route) {
	for _, r := range s.desired[key] {
		s.hosts[r.Host]--
		if s.hosts[r.Host] <= 0 {
			delete(s.hosts, r.Host)
		}
		s.nRoutes--
	}
	delete(s.desired, key)
	if len(rs) > 0 {
		s.desired[key] = rs
	}
	for _, r := range rs {
		s.hosts[r.Host]++
		s.nRoutes++
	}
}

// syncIngress brings the control plane in line with one ingress: register
// new or changed routes, unregister hosts that lost their last route. The
// unregister call names only a host, so a host that loses one of several
// paths is unregistered and its remaining routes registered again.
func (s *Syncer) syncIngress(ctx context.Context, key string) {
	rs := s.computeOne(key)
	if s.pendingFull() {
		return
	}
	next := map[string]map[string]route{}
	for _, r := range rs {
		if next[r.Host] == nil {
			next[r.Host] = map[string]route{}
		}
		next[r.Host][r.id()] = r
	}
	hosts := slices.Collect(maps.Keys(next))
	for h := range s.regHosts[key] {
		if next[h] == nil {
			hosts = append(hosts, h)
		}
	}
	slices.Sort(hosts)
	for _, h := range hosts {
		if err := s.syncHost(ctx, key, h, next[h]); err != nil {
			if ctx.Err() != nil {
				return
			}
			s.q.Forget(key)
			if IsPermanent(err) {
				s.log.Warn("route rejected by the control plane; not retried until the next full sync",
					logging.KeyIngress, key, logging.KeyHost, h, logging.KeyErr, err)
				continue
			}
			// The control plane is unreachable or failing: fall back to a
			// full sync with backoff rather than retrying ingress by ingress.
			delay := s.bo.Next()
			s.log.Warn("route registration failed; full sync scheduled", logging.KeyIngress, key, logging.KeyHost, h, logging.KeyErr, err,
				logging.KeyDelay, delay.Round(time.Millisecond))
			s.fullGen.Add(1)
			s.q.AddAfter(fullSyncKey, delay)
			return
		}
	}
	s.q.Forget(key)
}

// syncHost applies one ingress's routes for one host, given what is registered.
func (s *Syncer) syncHost(ctx context.Context, key, host string, mine map[string]route) error {
	cur := s.reg[host]
	want := map[string]route{}
	for id, r := range cur {
		if r.Ingress != key {
			want[id] = r
		}
	}
	maps.Copy(want, mine)
	removed := false
	for id := range cur {
		if _, ok := want[id]; !ok {
			removed = true
		}
	}
	if removed || len(want) == 0 {
		err := s.rest(func() error { return s.client.Unregister(ctx, host) })
		s.record(OpUnregister, err)
		if err != nil {
			return err
		}
		s.regDelHost(host)
		cur = nil
	}
	ids := slices.Sorted(maps.Keys(want))
	for _, id := range ids {
		r := want[id]
		if old, ok := cur[id]; ok && old.fp == r.fp {
			continue
		}
		err := s.rest(func() error { return s.client.Register(ctx, s.registerBody(r)) })
		s.record(OpRegister, err)
		if err != nil {
			return err
		}
		s.regPut(r)
	}
	return nil
}

func (s *Syncer) regPut(r route) {
	if s.reg[r.Host] == nil {
		s.reg[r.Host] = map[string]route{}
	}
	if _, ok := s.reg[r.Host][r.id()]; !ok {
		if s.regHosts[r.Ingress] == nil {
			s.regHosts[r.Ingress] = map[string]int{}
		}
		s.regHosts[r.Ingress][r.Host]++
	}
	s.reg[r.Host][r.id()] = r
}

func (s *Syncer) regDelHost(host string) {
	for _, r := range s.reg[host] {
		delete(s.regHosts[r.Ingress], host)
		if len(s.regHosts[r.Ingress]) == 0 {
			delete(s.regHosts, r.Ingress)
		}
	}
	delete(s.reg, host)
}

func (s *Syncer) registerBody(r route) *protocol.RouteRegister {
	s.mu.RLock()
	ctrl, rt := s.ctrl, s.rt
	s.mu.RUnlock()
	return &protocol.RouteRegister{
		Hostname: r.Host, ClusterUUID: s.opt.ClusterID(), Namespace: ctrl.Namespace, ServiceName: ctrl.Name,
		ServicePort: ctrl.Port, IngressName: r.IngressName, Path: r.Path, PathType: r.PathType, TLS: r.TLS,
		Annotations: r.Annotations, PublicEndpoint: rt.PublicEndpoint, RoutingMode: rt.Mode,
		DeploymentID: r.DeploymentID, DeploymentName: r.DeploymentName,
	}
}

// syncBody builds the full-sync body, ingresses sorted for a stable wire form.
func syncBody(clusterID string, ctrl controller, rt routing, desired map[string][]route) *protocol.RouteSync {
	body := &protocol.RouteSync{ClusterUUID: clusterID, PublicEndpoint: rt.PublicEndpoint, RoutingMode: rt.Mode,
		Ingresses: []protocol.SyncIngress{}}
	if ctrl.found() {
		body.IngressController = &protocol.IngressController{Name: ctrl.Name, Namespace: ctrl.Namespace, Port: ctrl.Port, Type: ctrl.Type}
	}
	for _, key := range slices.Sorted(maps.Keys(desired)) {
		rs := desired[key]
		ing := protocol.SyncIngress{Namespace: rs[0].Namespace, IngressName: rs[0].IngressName,
			Annotations: rs[0].Annotations, Rules: []protocol.SyncRule{}}
		if ing.Annotations == nil {
			ing.Annotations = map[string]string{}
		}
		byHost := map[string]int{}
		for _, r := range rs {
			i, ok := byHost[r.Host]
			if !ok {
				i = len(ing.Rules)
				byHost[r.Host] = i
				ing.Rules = append(ing.Rules, protocol.SyncRule{Host: r.Host, TLS: r.TLS})
			}
			ing.Rules[i].Paths = append(ing.Rules[i].Paths, protocol.SyncPath{Path: r.Path, PathType: r.PathType,
				ServiceName: ctrl.Name, ServicePort: ctrl.Port})
		}
		body.Ingresses = append(body.Ingresses, ing)
	}
	return body
}
