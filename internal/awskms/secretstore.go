package awskms

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DefaultSecret is the Secret in kube-system that holds the cluster's wrapped data keys.
const DefaultSecret = "constellation-wrapped-data-keys"

// secretKeyRe is what a Secret's data key may be.
var secretKeyRe = regexp.MustCompile(`^[-._a-zA-Z0-9]+$`)

// SecretStore keeps the wrapped data keys in one Kubernetes Secret, a data entry each. They may be stored
// in the cluster because they are useless without the KMS key that wrapped them: whoever reads the Secret
// still has to be allowed by the KMS to unwrap them. Writes use the Secret's resource version, so of two
// concurrent Creates of a name exactly one succeeds.
type SecretStore struct {
	client          kubernetes.Interface
	namespace, name string
}

// NewSecretStore returns the store in the Secret namespace/name.
func NewSecretStore(client kubernetes.Interface, namespace, name string) *SecretStore {
	return &SecretStore{client: client, namespace: namespace, name: name}
}

func (s *SecretStore) get(ctx context.Context) (*corev1.Secret, error) {
	return s.client.CoreV1().Secrets(s.namespace).Get(ctx, s.name, metav1.GetOptions{})
}

// Get returns the blob stored under name.
func (s *SecretStore) Get(ctx context.Context, name string) ([]byte, error) {
	sec, err := s.get(ctx)
	if apierrors.IsNotFound(err) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("reading Secret %s/%s: %w", s.namespace, s.name, err)
	}
	blob, ok := sec.Data[name]
	if !ok {
		return nil, ErrNotFound
	}
	return blob, nil
}

// Create stores blob under name unless something is stored there (ErrExists).
func (s *SecretStore) Create(ctx context.Context, name string, blob []byte) error {
	return s.modify(ctx, name, func(data map[string][]byte) error {
		if _, ok := data[name]; ok {
			return ErrExists
		}
		data[name] = blob
		return nil
	})
}

// Update replaces the blob under name.
func (s *SecretStore) Update(ctx context.Context, name string, blob []byte) error {
	return s.modify(ctx, name, func(data map[string][]byte) error {
		data[name] = blob
		return nil
	})
}

// List returns the names stored.
func (s *SecretStore) List(ctx context.Context) ([]string, error) {
	sec, err := s.get(ctx)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading Secret %s/%s: %w", s.namespace, s.name, err)
	}
	names := make([]string, 0, len(sec.Data))
	for n := range sec.Data {
		names = append(names, n)
	}
	return names, nil
}

// modify applies change to the Secret's data and writes it, retrying when another writer came first.
func (s *SecretStore) modify(ctx context.Context, name string, change func(map[string][]byte) error) error {
	if !secretKeyRe.MatchString(name) {
		return fmt.Errorf("%q cannot name an entry of a Secret", name)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		sec, err := s.get(ctx)
		if apierrors.IsNotFound(err) {
			data := map[string][]byte{}
			if err := change(data); err != nil {
				return err
			}
			_, err = s.client.CoreV1().Secrets(s.namespace).Create(ctx, &corev1.Secret{
				ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.namespace},
				Type:       corev1.SecretTypeOpaque, Data: data,
			}, metav1.CreateOptions{})
			if apierrors.IsAlreadyExists(err) {
				continue
			}
			return wrapSecretErr(s, err)
		}
		if err != nil {
			return wrapSecretErr(s, err)
		}
		if sec.Data == nil {
			sec.Data = map[string][]byte{}
		}
		if err := change(sec.Data); err != nil {
			return err
		}
		_, err = s.client.CoreV1().Secrets(s.namespace).Update(ctx, sec, metav1.UpdateOptions{})
		if apierrors.IsConflict(err) {
			continue
		}
		return wrapSecretErr(s, err)
	}
}

func wrapSecretErr(s *SecretStore, err error) error {
	if err == nil || errors.Is(err, ErrExists) {
		return err
	}
	return fmt.Errorf("writing Secret %s/%s: %w", s.namespace, s.name, err)
}
