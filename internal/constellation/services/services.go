// Package services installs and upgrades the cluster's services (the JoinService, the KeyService, the
// VerificationService and the upgrade controller) as one Helm chart, with the Helm SDK: the bootstrapper
// installs it at init, and `constellation apply` upgrades it to the chart of the CLI's release. `helm list
// -n kube-system` shows the release (ReleaseName) and its version.
//
// The chart holds code, not state. The master secret, the attestation config (which an image roll-out
// widens), the join config (which a Kubernetes upgrade moves) and the KMS credentials are created by the
// bootstrapper and changed by the roll-outs, never by the chart: a Helm release keeps its values and
// manifests in a Secret, and an upgrade of the chart must not undo a roll-out or carry a secret.
//
// The upgrade controller's resource type is applied before the chart, by server-side apply: Helm installs
// CRDs once and never upgrades them.
package services

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"path"
	"strings"
	"sync"
	"time"

	"helm.sh/helm/v4/pkg/action"
	"helm.sh/helm/v4/pkg/chart/loader/archive"
	chartv2 "helm.sh/helm/v4/pkg/chart/v2"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/kube"
	helmrelease "helm.sh/helm/v4/pkg/release"
	releasecommon "helm.sh/helm/v4/pkg/release/common"
	releasev1 "helm.sh/helm/v4/pkg/release/v1"
	"helm.sh/helm/v4/pkg/storage/driver"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/yaml"

	"github.com/constellation-go/constellation/internal/attestation/variant"
	"github.com/constellation-go/constellation/internal/constellation/kubeupgrade/v1alpha1"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/constellation-go/constellation/internal/versions"
)

// The release and the objects of the chart that other components address.
const (
	ReleaseName             = "constellation-services"
	Namespace               = metav1.NamespaceSystem
	JoinServiceName         = "joinservice"
	KeyServiceName          = "keyservice"
	VerificationServiceName = "verificationservice"
	OperatorName            = "operator"
	// maxHistory bounds the revisions Helm keeps (each a Secret in kube-system).
	maxHistory = 10
	// fieldManager owns the fields of the CRD and of the chart's objects, whichever program applies them
	// (the bootstrapper at init, the CLI later): under server-side apply, two managers of one field
	// conflict.
	fieldManager = "constellation-services"
)

//go:embed all:chart
var chartFiles embed.FS

// Chart is the services' chart at versions.ServicesVersion: the version of the images it names by default.
func Chart() (*chartv2.Chart, error) {
	var files []*archive.BufferedFile
	err := fs.WalkDir(chartFiles, "chart", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := chartFiles.ReadFile(name)
		if err != nil {
			return err
		}
		files = append(files, &archive.BufferedFile{Name: strings.TrimPrefix(name, "chart/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the services' chart: %w", err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("loading the services' chart: %w", err)
	}
	ch.Metadata.Version = strings.TrimPrefix(versions.ServicesVersion, "v")
	ch.Metadata.AppVersion = versions.ServicesVersion
	return ch, nil
}

// Images are the services' images, as imported into every node's containerd; empty fields mean the images
// of the chart's version.
type Images struct {
	JoinService         string `json:"joinService"`
	KeyService          string `json:"keyService"`
	VerificationService string `json:"verificationService"`
	Operator            string `json:"operator"`
}

// DefaultImages are the images of this release (versions.ServicesVersion), as Bazel builds them and
// containerd names them after an import.
func DefaultImages() Images {
	ref := func(name string) string { return "docker.io/constellation/" + name + ":" + versions.ServicesVersion }
	return Images{
		JoinService: ref(JoinServiceName), KeyService: ref(KeyServiceName),
		VerificationService: ref(VerificationServiceName), Operator: ref(OperatorName),
	}
}

// Values configure the chart for one cluster.
type Values struct {
	Images Images
	// APIServerEndpoint is host:port of the API server that joining nodes use.
	APIServerEndpoint string
	// KMSURI selects the KeyService's backend; empty means kms://cluster-kms.
	KMSURI string
	// Variant is the attestation variant the services attest as.
	Variant string
	// TPMAddress is the node's TPM ("swtpm:<socket>" or "device:<path>") and EventLogPath its TCG event log;
	// every node must have them at the same paths.
	TPMAddress, EventLogPath string
}

// Validate says everything that is wrong with v, before anything is installed.
func (v *Values) Validate() error {
	var errs []error
	if _, _, err := net.SplitHostPort(v.APIServerEndpoint); err != nil {
		errs = append(errs, fmt.Errorf("API server endpoint %q is not host:port", v.APIServerEndpoint))
	}
	if v.KMSURI == "" {
		v.KMSURI = kmsuri.Default
	}
	if _, err := kmsuri.Parse(v.KMSURI); err != nil {
		errs = append(errs, err)
	}
	if _, err := variant.FromString(v.Variant); err != nil {
		errs = append(errs, err)
	}
	if !strings.HasPrefix(v.TPMAddress, "swtpm:") && !strings.HasPrefix(v.TPMAddress, "device:") {
		errs = append(errs, fmt.Errorf("TPM address %q: expected swtpm:<socket> or device:<path>", v.TPMAddress))
	}
	if !path.IsAbs(v.EventLogPath) {
		errs = append(errs, fmt.Errorf("event log path %q is not absolute", v.EventLogPath))
	}
	return errors.Join(errs...)
}

func (v *Values) asMap() map[string]any {
	return map[string]any{
		"images":            v.Images.asMap(),
		"apiServerEndpoint": v.APIServerEndpoint,
		"kmsURI":            v.KMSURI,
		"attestation":       map[string]any{"variant": v.Variant, "tpm": v.TPMAddress, "eventLog": v.EventLogPath},
	}
}

func (i Images) asMap() map[string]any {
	return map[string]any{
		"joinService": i.JoinService, "keyService": i.KeyService, "verificationService": i.VerificationService, "operator": i.Operator,
	}
}

// Release is the services' release as Helm records it.
type Release struct {
	Name, Namespace string
	// ChartVersion is the chart's version; AppVersion the services' version (their images' tag).
	ChartVersion, AppVersion string
	Revision                 int
	Status                   string
	Updated                  time.Time
}

func (r Release) String() string {
	return fmt.Sprintf("%s %s (revision %d, %s)", r.Name, r.AppVersion, r.Revision, r.Status)
}

// ErrNotInstalled: the cluster has no release of the services, because an earlier release of Constellation
// deployed them without Helm.
var ErrNotInstalled = errors.New("the services are not a Helm release")

var setFieldManager sync.Once

// Client installs and upgrades the services' release.
type Client struct {
	helm   *action.Configuration
	config *rest.Config
}

// NewClient returns a client for the cluster of an admin kubeconfig.
func NewClient(kubeconfig []byte, log *slog.Logger) (*Client, error) {
	getter, err := newRESTClientGetter(kubeconfig, Namespace)
	if err != nil {
		return nil, err
	}
	config, err := getter.ToRESTConfig()
	if err != nil {
		return nil, err
	}
	// Helm names its field manager after the running program unless told otherwise.
	setFieldManager.Do(func() { kube.ManagedFieldsManager = fieldManager })
	helm := action.NewConfiguration(action.ConfigurationSetLogger(log.Handler()))
	if err := helm.Init(getter, Namespace, "secret"); err != nil {
		return nil, fmt.Errorf("setting up Helm: %w", err)
	}
	return &Client{helm: helm, config: config}, nil
}

// Current returns the release the cluster runs; ErrNotInstalled if it has none.
func (c *Client) Current(ctx context.Context) (Release, error) {
	rel, err := c.current()
	if err != nil {
		return Release{}, err
	}
	return describe(rel), nil
}

func (c *Client) current() (*releasev1.Release, error) {
	got, err := action.NewGet(c.helm).Run(ReleaseName)
	if errors.Is(err, driver.ErrReleaseNotFound) {
		return nil, ErrNotInstalled
	}
	if err != nil {
		return nil, fmt.Errorf("reading the release %s: %w", ReleaseName, err)
	}
	return asV1(got)
}

// Install installs the services with v, at init. An init that is run again (it was interrupted) upgrades
// the release it left to exactly v.
func (c *Client) Install(ctx context.Context, v Values) (Release, error) {
	if err := v.Validate(); err != nil {
		return Release{}, fmt.Errorf("the services' values: %w", err)
	}
	ch, err := Chart()
	if err != nil {
		return Release{}, err
	}
	if err := c.applyCRD(ctx); err != nil {
		return Release{}, err
	}
	existing, err := c.current()
	switch {
	case errors.Is(err, ErrNotInstalled):
	case err != nil:
		return Release{}, err
	case existing.Info.Status == releasecommon.StatusDeployed || existing.Version > 1:
		rel, err := c.upgrade(ctx, ch, v.asMap(), false)
		if err != nil {
			return Release{}, err
		}
		return describe(rel), nil
	default:
		// Only a first install that did not finish: nothing depends on it yet, so it is removed and done again.
		un := action.NewUninstall(c.helm)
		un.WaitStrategy = kube.HookOnlyStrategy
		if _, err := un.Run(ReleaseName); err != nil {
			return Release{}, fmt.Errorf("removing the unfinished release %s: %w", ReleaseName, err)
		}
	}
	in := action.NewInstall(c.helm)
	in.ReleaseName, in.Namespace = ReleaseName, Namespace
	// Nothing to wait for: at init only this node exists, and the services' pods start after it.
	in.WaitStrategy = kube.HookOnlyStrategy
	in.Description = "installed at init"
	got, err := in.RunWithContext(ctx, ch, v.asMap())
	if err != nil {
		return Release{}, fmt.Errorf("installing the services' chart: %w", err)
	}
	rel, err := asV1(got)
	if err != nil {
		return Release{}, err
	}
	return describe(rel), nil
}

// Change is what an upgrade changes in the release's values; everything else stays as installed.
type Change struct {
	// Images are the services' images.
	Images Images
	// KMSURI, if set, is the KeyService's new backend (a new KMS key of user-managed keys).
	KMSURI string
}

// Upgrade moves the release to this binary's chart, keeping the values the cluster was installed with and
// applying change. No revision is made when nothing would change; changed says whether one was. A release
// that an interrupted upgrade left pending is rolled back to its last deployed revision first.
func (c *Client) Upgrade(ctx context.Context, change Change) (rel Release, changed bool, err error) {
	ch, err := Chart()
	if err != nil {
		return Release{}, false, err
	}
	current, err := c.current()
	if err != nil {
		return Release{}, false, err
	}
	if current.Info.Status.IsPending() || current.Info.Status == releasecommon.StatusFailed {
		rb := action.NewRollback(c.helm)
		rb.WaitStrategy, rb.MaxHistory = kube.HookOnlyStrategy, maxHistory
		if err := rb.Run(ReleaseName); err != nil {
			return Release{}, false, fmt.Errorf("the release %s is %s after an interrupted upgrade, and rolling it back failed: %w",
				ReleaseName, current.Info.Status, err)
		}
		if current, err = c.current(); err != nil {
			return Release{}, false, err
		}
	}
	override := map[string]any{"images": change.Images.asMap()}
	if change.KMSURI != "" {
		override["kmsURI"] = change.KMSURI
	}
	values := loader.MergeMaps(current.Config, override)
	if err := c.applyCRD(ctx); err != nil {
		return Release{}, false, err
	}
	planned, err := c.upgrade(ctx, ch, values, true)
	if err != nil {
		return Release{}, false, err
	}
	if planned.Manifest != current.Manifest || current.Chart == nil || current.Chart.Metadata.Version != ch.Metadata.Version {
		upgraded, err := c.upgrade(ctx, ch, values, false)
		if err != nil {
			return Release{}, false, err
		}
		return describe(upgraded), true, nil
	}
	return describe(current), false, nil
}

// upgrade upgrades the release to ch with values (replacing the values it had); dryRun only renders it.
func (c *Client) upgrade(ctx context.Context, ch *chartv2.Chart, values map[string]any, dryRun bool) (*releasev1.Release, error) {
	up := action.NewUpgrade(c.helm)
	up.Namespace, up.MaxHistory, up.ResetValues = Namespace, maxHistory, true
	up.WaitStrategy = kube.HookOnlyStrategy
	up.Description = "upgraded by constellation apply"
	if dryRun {
		up.DryRunStrategy = action.DryRunClient
	}
	got, err := up.RunWithContext(ctx, ReleaseName, ch, values)
	if err != nil {
		return nil, fmt.Errorf("upgrading the services' chart: %w", err)
	}
	return asV1(got)
}

func describe(rel *releasev1.Release) Release {
	r := Release{Name: rel.Name, Namespace: rel.Namespace, Revision: rel.Version}
	if rel.Chart != nil && rel.Chart.Metadata != nil {
		r.ChartVersion, r.AppVersion = rel.Chart.Metadata.Version, rel.Chart.Metadata.AppVersion
	}
	if rel.Info != nil {
		r.Status, r.Updated = rel.Info.Status.String(), rel.Info.LastDeployed
	}
	return r
}

func asV1(r helmrelease.Releaser) (*releasev1.Release, error) {
	rel, ok := r.(*releasev1.Release)
	if !ok || rel == nil {
		return nil, fmt.Errorf("helm returned a release of type %T", r)
	}
	return rel, nil
}

// applyCRD applies the upgrade controller's resource type by server-side apply (through the REST client:
// the typed apiextensions client would be a second client for one object).
func (c *Client) applyCRD(ctx context.Context) error {
	client, err := kubernetes.NewForConfig(c.config)
	if err != nil {
		return err
	}
	var crd struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(v1alpha1.CRD, &crd); err != nil || crd.Metadata.Name == "" {
		return fmt.Errorf("the upgrade controller's resource type has no name (%v)", err)
	}
	name := crd.Metadata.Name
	if err := client.Discovery().RESTClient().Patch(types.ApplyYAMLPatchType).
		AbsPath("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", name).
		Param("fieldManager", fieldManager).Param("force", "true").
		Body(v1alpha1.CRD).Do(ctx).Error(); err != nil {
		return fmt.Errorf("applying the resource type %s: %w", name, err)
	}
	return nil
}

// UserManagedKeys says whether a KeyService with the KMS URI uses a user-managed KMS (any backend but the
// master secret's): then it keeps wrapped data keys in a Secret and gets an account for it.
func UserManagedKeys(uri string) bool {
	u, err := kmsuri.Parse(uri)
	return err == nil && u.Host != kmsuri.ClusterKMS
}
