package ha

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// identityKey is the Secret's data key: one versioned JSON record.
const identityKey = "identity.json"

// Identity is the cluster's identity as the control plane knows it, shared
// by every agent of the cluster through the Secret SecretName. The leader
// writes it once it has registered (and again when it changes); the others
// adopt it before they lead, so a failover resumes on the gateway without
// registering.
type Identity struct {
	Version      int    `json:"version"`
	AgentID      string `json:"agent_id"`
	ClusterID    string `json:"cluster_id"`
	ClusterUUID  string `json:"cluster_uuid,omitempty"`
	GatewayWSURL string `json:"gateway_ws_url,omitempty"`
	// The Kubernetes token and CA sent at registration, and their
	// fingerprint (protocol.md §8.3): an agent holding the same ones
	// resumes without registering.
	ClusterToken           string    `json:"cluster_token,omitempty"`
	ClusterCAData          string    `json:"cluster_cert_data,omitempty"`
	CredentialsFingerprint string    `json:"credentials_fingerprint,omitempty"`
	TokenSource            string    `json:"token_source,omitempty"`
	TokenSecret            string    `json:"token_secret,omitempty"`
	TokenIssuedAt          time.Time `json:"token_issued_at,omitzero"`
	TokenExpiresAt         time.Time `json:"token_expires_at,omitzero"`
	// Secrets are the generated credentials (the monitoring stack's).
	Secrets   map[string]string `json:"secrets,omitempty"`
	UpdatedBy string            `json:"updated_by,omitempty"`
	UpdatedAt time.Time         `json:"updated_at,omitzero"`
}

// Registered reports whether the identity names a registered cluster.
func (id Identity) Registered() bool { return id.AgentID != "" && id.ClusterID != "" }

// Same reports whether two identities carry the same content (the
// bookkeeping fields aside).
func (id Identity) Same(o Identity) bool {
	a, b := id, o
	a.UpdatedBy, a.UpdatedAt, b.UpdatedBy, b.UpdatedAt = "", time.Time{}, "", time.Time{}
	a.Version, b.Version = 0, 0
	return a.AgentID == b.AgentID && a.ClusterID == b.ClusterID && a.ClusterUUID == b.ClusterUUID &&
		a.GatewayWSURL == b.GatewayWSURL && a.ClusterToken == b.ClusterToken && a.ClusterCAData == b.ClusterCAData &&
		a.CredentialsFingerprint == b.CredentialsFingerprint && a.TokenSource == b.TokenSource && a.TokenSecret == b.TokenSecret &&
		a.TokenIssuedAt.Equal(b.TokenIssuedAt) && a.TokenExpiresAt.Equal(b.TokenExpiresAt) && maps.Equal(a.Secrets, b.Secrets)
}

// LoadIdentity reads the shared identity; ok is false when there is none
// yet (no Secret, or one without a registered identity).
func LoadIdentity(ctx context.Context, cs kubernetes.Interface, ns string) (id Identity, ok bool, err error) {
	s, err := cs.CoreV1().Secrets(ns).Get(ctx, SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return Identity{}, false, nil
	}
	if err != nil {
		return Identity{}, false, fmt.Errorf("read the shared identity %s/%s: %w", ns, SecretName, err)
	}
	raw := s.Data[identityKey]
	if len(raw) == 0 {
		return Identity{}, false, nil
	}
	if err := json.Unmarshal(raw, &id); err != nil {
		return Identity{}, false, fmt.Errorf("parse the shared identity %s/%s: %w", ns, SecretName, err)
	}
	if id.Version > 1 {
		return Identity{}, false, fmt.Errorf("the shared identity %s/%s was written by a newer agent (v%d): upgrade pipeops-agent on this node", ns, SecretName, id.Version)
	}
	return id, id.Registered(), nil
}

// SaveIdentity writes the shared identity, creating the Secret when the
// bootstrap has not (yet). Only the leader calls it.
func SaveIdentity(ctx context.Context, cs kubernetes.Interface, ns string, id Identity) error {
	id.Version = 1
	raw, err := json.Marshal(id)
	if err != nil {
		return fmt.Errorf("encode the shared identity: %w", err)
	}
	api := cs.CoreV1().Secrets(ns)
	cur, err := api.Get(ctx, SecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = api.Create(ctx, NewIdentitySecret(raw), metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create the shared identity %s/%s: %w", ns, SecretName, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("read the shared identity %s/%s: %w", ns, SecretName, err)
	}
	if cur.Data == nil {
		cur.Data = map[string][]byte{}
	}
	cur.Data[identityKey] = raw
	if _, err := api.Update(ctx, cur, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update the shared identity %s/%s: %w", ns, SecretName, err)
	}
	return nil
}

// NewIdentitySecret is the identity Secret holding raw (nil: empty, as the
// bootstrap creates it so the ServiceAccount needs no create right).
func NewIdentitySecret(raw []byte) *corev1.Secret {
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SecretName, Labels: map[string]string{"app.kubernetes.io/managed-by": "pipeops-agent"}},
		Type:       corev1.SecretTypeOpaque,
	}
	if raw != nil {
		s.Data = map[string][]byte{identityKey: raw}
	}
	return s
}
