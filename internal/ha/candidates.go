package ha

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/pipeops/pipeops-vm-agent/internal/apitype"
	"github.com/pipeops/pipeops-vm-agent/internal/logging"
)

// candidateName is the candidate Lease of identity: a DNS subdomain.
func candidateName(identity string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(identity) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '.':
			b.WriteRune(r)
		default:
			b.WriteByte('-')
		}
	}
	name := strings.Trim(b.String(), "-.")
	if max := 253 - len(CandidatePrefix); len(name) > max {
		name = name[:max]
	}
	return CandidatePrefix + name
}

// keepCandidate renews this agent's candidate Lease every lease duration
// until ctx ends, so `pipeopsctl ha status` lists who takes part, and runs
// the Tick hook (the daemon refreshes its copy of the identity).
func (e *Elector) keepCandidate(ctx context.Context, cs kubernetes.Interface) {
	t := time.NewTicker(e.o.LeaseDuration)
	defer t.Stop()
	for {
		rctx, cancel := context.WithTimeout(ctx, e.o.RenewDeadline)
		if err := e.renewCandidate(rctx, cs); err != nil && ctx.Err() == nil {
			e.log.Debug("could not renew the candidate lease", logging.KeyErr, err)
		}
		if ctx.Err() == nil {
			_ = e.refresh(rctx, cs) // candidates for Snapshot; Status reports errors
		}
		if e.o.Tick != nil && ctx.Err() == nil {
			e.o.Tick(rctx, cs)
		}
		cancel()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *Elector) renewCandidate(ctx context.Context, cs kubernetes.Interface) error {
	api := cs.CoordinationV1().Leases(e.o.Namespace)
	name := candidateName(e.o.Identity)
	now := metav1.NewMicroTime(time.Now())
	secs := int32(3 * e.o.LeaseDuration / time.Second)
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{CandidateLabel: "true"}},
			Spec:       coordinationv1.LeaseSpec{HolderIdentity: &e.o.Identity, LeaseDurationSeconds: &secs, RenewTime: &now, AcquireTime: &now},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create candidate lease %s: %w", name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get candidate lease %s: %w", name, err)
	}
	cur.Spec.HolderIdentity, cur.Spec.LeaseDurationSeconds, cur.Spec.RenewTime = &e.o.Identity, &secs, &now
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update candidate lease %s: %w", name, err)
	}
	return nil
}

// Status is this agent's role and, read from the API server (bounded to
// 2 s; the last view when it does not answer), who leads since when and
// which candidates take part.
func (e *Elector) Status(ctx context.Context) apitype.HAStatus {
	e.mu.Lock()
	cs := e.cs
	e.mu.Unlock()
	var lastErr string
	if cs != nil {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := e.refresh(ctx, cs); err != nil {
			lastErr = err.Error()
		}
		cancel()
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.snapshotLocked(lastErr)
}

func (e *Elector) snapshotLocked(lastErr string) apitype.HAStatus {
	st := apitype.HAStatus{Role: e.role, Identity: e.o.Identity, Leader: e.leader, LeaderSince: e.since,
		LeaseDuration: e.o.LeaseDuration.String(), RenewDeadline: e.o.RenewDeadline.String(), RetryPeriod: e.o.RetryPeriod.String(),
		LastError: lastErr}
	if st.Leader == "" {
		st.LeaderSince = time.Time{}
	}
	for _, c := range e.cands {
		c.Leader = c.Identity == st.Leader
		c.Self = c.Identity == e.o.Identity
		st.Candidates = append(st.Candidates, c)
	}
	return st
}

// refresh reads the leader Lease and the candidate Leases.
func (e *Elector) refresh(ctx context.Context, cs kubernetes.Interface) error {
	api := cs.CoordinationV1().Leases(e.o.Namespace)
	l, err := api.Get(ctx, LeaseName, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		e.observe("", time.Time{})
	case err != nil:
		return fmt.Errorf("read lease %s/%s: %w", e.o.Namespace, LeaseName, err)
	default:
		holder, since := "", time.Time{}
		if l.Spec.HolderIdentity != nil {
			holder = *l.Spec.HolderIdentity
		}
		if l.Spec.AcquireTime != nil {
			since = l.Spec.AcquireTime.Time
		}
		// A holder whose lease ran out is no leader.
		if holder != "" && l.Spec.RenewTime != nil && l.Spec.LeaseDurationSeconds != nil &&
			time.Since(l.Spec.RenewTime.Time) > time.Duration(*l.Spec.LeaseDurationSeconds)*time.Second {
			holder, since = "", time.Time{}
		}
		e.observe(holder, since)
	}
	list, err := api.List(ctx, metav1.ListOptions{LabelSelector: CandidateLabel + "=true"})
	if err != nil {
		return fmt.Errorf("list candidate leases in %s: %w", e.o.Namespace, err)
	}
	var out []apitype.HACandidate
	for _, it := range list.Items {
		c := apitype.HACandidate{}
		if it.Spec.HolderIdentity != nil {
			c.Identity = *it.Spec.HolderIdentity
		}
		if it.Spec.RenewTime != nil {
			c.Renewed = it.Spec.RenewTime.Time
			c.Alive = time.Since(c.Renewed) < 3*e.o.LeaseDuration
		}
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Identity < out[j].Identity })
	e.mu.Lock()
	e.cands = out
	e.mu.Unlock()
	return nil
}
