package cmd

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/kms"
	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/constellation-go/constellation/bootstrapper/recoverproto"
	"github.com/constellation-go/constellation/internal/awskms"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/services"
	"github.com/constellation-go/constellation/internal/crypto"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/joinservice/joinproto"
	"github.com/constellation-go/constellation/keyservice/keyserviceproto"
)

// kmsCredentials reads the credentials kms.awsKMS.credentialsFile names; nil without user-managed keys or
// without the file setting (the nodes' own AWS environment is used then).
func (e *env) kmsCredentials(cfg *config.Config) (*awskms.Credentials, error) {
	a := cfg.KMS.AWSKMS
	if a == nil || a.CredentialsFile == "" {
		return nil, nil
	}
	data, err := e.files.Read(a.CredentialsFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("kms.awsKMS.credentialsFile: %s is missing: write it with 'aws configure export-credentials --format process > %s' "+
			"(mode 0600), or remove the setting to use the nodes' own AWS environment", e.path(a.CredentialsFile), a.CredentialsFile)
	}
	if err != nil {
		return nil, fmt.Errorf("kms.awsKMS.credentialsFile: %w", err)
	}
	c, err := awskms.ParseCredentials(data)
	if err != nil {
		return nil, fmt.Errorf("kms.awsKMS.credentialsFile %s: %w", e.path(a.CredentialsFile), err)
	}
	return &c, nil
}

// recoverRequest returns how recover unlocks a node. Constellation-managed keys: the node derives its disk
// key from the master secret. User-managed: the node's disk key exists only wrapped by the user's KMS key
// (kept beside the disk, returned by Describe); the admin's KMS access unwraps it here, and the re-wrapped
// form (by the key configured now, which may be a newer one) goes back to the node with it.
func (e *env) recoverRequest(ctx context.Context, cfg *config.Config, ms crypto.MasterSecret) (prepareRecovery, error) {
	base := func() *recoverproto.RecoverRequest {
		return &recoverproto.RecoverRequest{MasterSecret: ms.Key, Salt: ms.Salt}
	}
	a := cfg.KMS.AWSKMS
	if a == nil {
		return func(context.Context, *recoverproto.DescribeResponse) (*recoverproto.RecoverRequest, error) {
			return base(), nil
		}, nil
	}
	client, err := e.kmsClient(ctx, cfg)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, desc *recoverproto.DescribeResponse) (*recoverproto.RecoverRequest, error) {
		wrapped := desc.GetWrappedStateDiskKey()
		if len(wrapped) == 0 {
			return nil, fmt.Errorf("the node keeps no wrapped disk key: was its disk set up before the cluster used user-managed keys (%s)?", cfg.KMS)
		}
		// Unwrapped with whichever KMS key the blob names: a key moved since must still be enabled.
		key, err := awskms.Unwrap(ctx, client, "", desc.GetDiskUuid(), joinproto.StateDiskKeyLength, wrapped)
		if err != nil {
			return nil, fmt.Errorf("unwrapping the node's disk key with your KMS: %w", err)
		}
		rewrapped, err := awskms.Rewrap(ctx, client, desc.GetDiskUuid(), wrapped, a.KeyID)
		if err != nil {
			return nil, fmt.Errorf("re-wrapping the node's disk key with %s: %w", a.KeyID, err)
		}
		req := base()
		req.StateDiskKey, req.WrappedStateDiskKey = key, rewrapped
		return req, nil
	}, nil
}

// kmsClient is the CLI's client of the configured KMS: with the credentials of kms.awsKMS.credentialsFile,
// else the admin's own AWS environment.
func (e *env) kmsClient(ctx context.Context, cfg *config.Config) (*kms.Client, error) {
	a := cfg.KMS.AWSKMS
	creds, err := e.kmsCredentials(cfg)
	if err != nil {
		return nil, err
	}
	return awskms.Settings{Region: a.Region, KeyID: a.KeyID, Endpoint: a.Endpoint}.Client(ctx, creds.Provider())
}

// keyServiceURI is the key backend the cluster's KeyService runs with (its DaemonSet's --kms-uri).
func keyServiceURI(ds *appsv1.DaemonSet) string {
	uri := kmsuri.Default
	for _, c := range ds.Spec.Template.Spec.Containers {
		for _, arg := range c.Args {
			if v, ok := strings.CutPrefix(arg, keyserviceproto.KMSURIFlag); ok {
				uri = v
			}
		}
	}
	return uri
}

// restartKeyService restarts the KeyService with the KMS URI: through the services' release, whose value it
// is, or, for services an earlier release deployed without Helm, on its DaemonSet.
func (e *env) restartKeyService(ctx context.Context, ds *appsv1.DaemonSet, uri string) error {
	helm, err := e.servicesClient()
	if err != nil {
		return err
	}
	_, _, err = helm.Upgrade(ctx, services.Change{Images: services.DefaultImages(), KMSURI: uri})
	if !errors.Is(err, services.ErrNotInstalled) {
		return err
	}
	k8s, err := e.adminClient()
	if err != nil {
		return err
	}
	for i := range ds.Spec.Template.Spec.Containers[0].Args {
		if strings.HasPrefix(ds.Spec.Template.Spec.Containers[0].Args[i], keyserviceproto.KMSURIFlag) {
			ds.Spec.Template.Spec.Containers[0].Args[i] = keyserviceproto.KMSURIFlag + uri
		}
	}
	_, err = k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Update(ctx, ds, metav1.UpdateOptions{})
	return err
}

// keyMoveTimeout bounds the KeyService's restart with a new KMS key and its re-wrapping of the keys.
const keyMoveTimeout = 5 * time.Minute

// applyKeyBackend moves an initialized cluster's KeyService to the KMS key the configuration names, if it
// changed: the KeyService restarts with it and re-wraps the stored keys (the keys themselves stay, so every
// disk still opens). apply waits until no stored key is wrapped by another KMS key. A change of backend,
// region or endpoint is refused: the disks' keys, or the KMS that holds them, would change.
func (e *env) applyKeyBackend(ctx context.Context, cfg *config.Config, p *progress) error {
	k8s, err := e.adminClient()
	if err != nil {
		return err
	}
	dsAPI := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem)
	ds, err := dsAPI.Get(ctx, keyserviceproto.DaemonSetName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("reading the KeyService: %w", err)
	}
	current, want := keyServiceURI(ds), cfg.KMS.URI()
	if current == want {
		return nil
	}
	cur, err := kmsuri.Parse(current)
	if err != nil {
		return fmt.Errorf("the cluster's KeyService: %w", err)
	}
	next, err := kmsuri.Parse(want)
	if err != nil {
		return err
	}
	q, nq := cur.Query(), next.Query()
	if cur.Host != kmsuri.AWSKMS || next.Host != kmsuri.AWSKMS || q.Get(kmsuri.AWSRegion) != nq.Get(kmsuri.AWSRegion) ||
		q.Get(kmsuri.AWSEndpoint) != nq.Get(kmsuri.AWSEndpoint) {
		return fmt.Errorf("kms: the cluster's keys are %s; %s says %s. Only the KMS key of user-managed keys can change "+
			"(the disks' keys must stay the same): set the kms section back", describeKeys(current), e.path(config.FileName), cfg.KMS)
	}
	newKey := nq.Get(kmsuri.AWSKeyID)
	p.Step("Moving the cluster's keys to KMS key %s (re-wrapped; the keys themselves stay)", newKey)
	if err := e.restartKeyService(ctx, ds, want); err != nil {
		return fmt.Errorf("restarting the KeyService with key %s: %w\nRe-run 'constellation apply'", newKey, err)
	}
	client, err := e.kmsClient(ctx, cfg)
	if err != nil {
		return err
	}
	backend, err := awskms.New(client, newKey, awskms.NewSecretStore(k8s, metav1.NamespaceSystem, awskms.DefaultSecret))
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, keyMoveTimeout)
	defer cancel()
	for {
		foreign, err := backend.Foreign(wctx)
		if err == nil && foreign == 0 {
			break
		}
		if err == nil {
			err = fmt.Errorf("%d stored keys are still wrapped by the old KMS key", foreign)
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("the KeyService did not re-wrap the stored keys with %s in %s: %w\nCheck its log "+
				"(kubectl -n kube-system logs ds/%s) and re-run 'constellation apply'; the old key still unwraps them",
				newKey, keyMoveTimeout, err, keyserviceproto.DaemonSetName)
		case <-time.After(2 * time.Second):
		}
	}
	p.Detail("every key the KeyService keeps is wrapped by %s now; each control plane's own copy (for recover) moves at its "+
		"next recover, each worker's at its next restart: keep the old key enabled until then", newKey)
	p.Done()
	return nil
}
