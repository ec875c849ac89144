package cmd

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/constellation-go/constellation/internal/cloudprovider"
	"github.com/constellation-go/constellation/internal/config"
	"github.com/constellation-go/constellation/internal/constellation/upgrade"
	"github.com/constellation-go/constellation/internal/file"
	"github.com/constellation-go/constellation/internal/measurements"
	"github.com/constellation-go/constellation/internal/versions"
)

const (
	flagImage        = "image"
	flagUpdateConfig = "update-config"
)

func newUpgradeCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "See what the cluster can be upgraded to",
		Long: `See what this CLI can move a running cluster to (upgrade check: newer Kubernetes versions it pins, a node
image and its measurements, the services' version) and move it there (upgrade apply, the same as
'constellation apply' on an initialized cluster). Kubernetes upgrades and node image roll-outs work on
local clusters; service upgrades are not built yet.`,
		Args: cobra.NoArgs,
	}
	cmd.AddCommand(newUpgradeCheckCmd(e), newUpgradeApplyCmd(e))
	return cmd
}

func newUpgradeCheckCmd(e *env) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "List the Kubernetes versions, node image and services this CLI can move the cluster to",
		Long: `List what this CLI can move the cluster to:

- Kubernetes: the versions this release pins that are newer than the cluster's (asked of the cluster
  through the admin kubeconfig; before init, the configuration's), up to the next minor version:
  kubeadm upgrades one minor at a time and never downgrades.
- Node image: the image installed beside the CLI (or --image), its precomputed measurements, and which
  PCRs differ from the measurements the configuration trusts (none: the same image).
- Services: the version of the services' images beside the CLI and the one the cluster runs.

With --update-config the chosen targets (the newest Kubernetes version, or --kubernetes, and the image with
its measurements) are written into constellation-conf.yaml; its comments and everything else stay as they
were.`,
		Example: `  constellation upgrade check
  constellation upgrade check --image /srv/images/next -o json
  constellation upgrade check --update-config --kubernetes v1.34.10`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			format, err := outputFormat(cmd)
			if err != nil {
				return err
			}
			image, _ := cmd.Flags().GetString(flagImage)
			update, _ := cmd.Flags().GetBool(flagUpdateConfig)
			k8s, _ := cmd.Flags().GetString(flagKubernetes)
			if k8s != "" && !update {
				return fmt.Errorf("--%s chooses the version --%s writes; pass both", flagKubernetes, flagUpdateConfig)
			}
			return e.upgradeCheck(cmd.Context(), upgradeCheckOptions{image: image, update: update, kubernetes: k8s, format: format})
		},
	}
	cmd.Flags().String(flagImage, "", "node image directory to consider (default: the image installed beside the CLI)")
	cmd.Flags().Bool(flagUpdateConfig, false, "write the targets into "+config.FileName)
	cmd.Flags().String(flagKubernetes, "", "with --update-config: the Kubernetes version to write (default: the newest target)")
	_ = cmd.RegisterFlagCompletionFunc(flagKubernetes, cobra.FixedCompletions(versions.SupportedKubernetes(), cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.MarkFlagDirname(flagImage)
	addOutputFlag(cmd)
	return cmd
}

func newUpgradeApplyCmd(e *env) *cobra.Command {
	return &cobra.Command{
		Use:   "apply",
		Short: "Move an initialized cluster to the Kubernetes version and node image constellation-conf.yaml names",
		Long: `The same as 'constellation apply' on an initialized cluster, under the name upgrades are looked for.

Kubernetes (kubernetesVersion): every node first verifies and installs the new version's components; then
the first control plane runs 'kubeadm upgrade apply', the JoinService hands joining nodes the new version,
and every other node (control planes first; each cordoned and drained) runs 'kubeadm upgrade node' and
restarts its kubelet. Downgrades and skipped minor versions are refused before anything changes.

Node image: the nodes move to the configuration's image one at a time (control planes first; each
cordoned, drained, rebooted into the image with its state disk kept, rejoined or unlocked, Ready,
uncordoned and verified). Both images are trusted while nodes move, only the new one afterwards.

Kubernetes moves first, then the image. The nodes carry out their steps on their own: re-running continues
an interrupted upgrade. Choose the targets first with 'constellation upgrade check --update-config'.`,
		Example: `  constellation upgrade check --update-config --kubernetes v1.34.10
  constellation upgrade check --image /srv/images/next --update-config
  constellation upgrade apply`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, st, err := e.loadInitialized("upgrade")
			if err != nil {
				return err
			}
			return e.applyInitialized(cmd.Context(), cfg, st, e.progress())
		},
	}
}

type upgradeCheckOptions struct {
	image, kubernetes, format string
	update                    bool
}

type upgradeCheckResult struct {
	Kubernetes upgradeKubernetes `json:"kubernetes"`
	Image      *upgradeImage     `json:"image,omitempty"`
	Services   upgradeServices   `json:"services"`
	// Updated lists the fields --update-config wrote.
	Updated []string `json:"updatedConfig,omitempty"`
}

type upgradeKubernetes struct {
	Current string `json:"current"`
	// Source says where Current comes from: "cluster" or "configuration".
	Source  string                     `json:"source"`
	Targets []upgrade.KubernetesTarget `json:"targets"`
	// NotBuilt lists the targets whose components this machine has not built (local clusters need them).
	NotBuilt []string `json:"notBuiltHere,omitempty"`
}

type upgradeImage struct {
	Configured   string         `json:"configured"`
	Candidate    string         `json:"candidate"`
	ChangedPCRs  []uint32       `json:"changedPCRs"`
	Measurements measurements.M `json:"measurements"`
	// Note explains a candidate that could not be measured.
	Note string `json:"note,omitempty"`
}

type upgradeServices struct {
	CLI     string `json:"cli"`
	Cluster string `json:"cluster,omitempty"`
}

func (e *env) upgradeCheck(ctx context.Context, o upgradeCheckOptions) error {
	cfg, err := e.loadConfig()
	if err != nil {
		return err
	}
	res := upgradeCheckResult{
		Kubernetes: upgradeKubernetes{Current: cfg.KubernetesVersion, Source: "configuration"},
		Services:   upgradeServices{CLI: versions.ServicesVersion},
	}
	if current, services, ok := e.clusterVersions(ctx); ok {
		res.Kubernetes.Current, res.Kubernetes.Source, res.Services.Cluster = current, "cluster", services
	}
	if res.Kubernetes.Current, err = versions.ResolveKubernetes(res.Kubernetes.Current); err != nil {
		return fmt.Errorf("the %s's Kubernetes version: %w", res.Kubernetes.Source, err)
	}
	if res.Kubernetes.Targets, err = upgrade.KubernetesTargets(res.Kubernetes.Current, versions.SupportedKubernetes()); err != nil {
		return err
	}
	if cfg.GetProvider() == cloudprovider.Local {
		for _, t := range res.Kubernetes.Targets {
			if !versions.Built(t.Version) {
				res.Kubernetes.NotBuilt = append(res.Kubernetes.NotBuilt, t.Version)
			}
		}
	}
	if res.Image, err = e.imageCandidate(cfg, o.image); err != nil {
		return err
	}
	if o.update {
		if res.Updated, err = e.writeUpgradeTargets(cfg, &res, o.kubernetes); err != nil {
			return err
		}
	}
	if o.format == outputJSON {
		data, err := json.MarshalIndent(res, "", "  ")
		if err != nil {
			return err
		}
		fmt.Fprintln(e.out, string(data))
		return nil
	}
	e.printUpgradeCheck(&res)
	return nil
}

// clusterVersions asks the cluster (through the admin kubeconfig) for its Kubernetes version and the
// services' image tag; ok is false before init or when the cluster does not answer.
func (e *env) clusterVersions(ctx context.Context) (kubernetes, services string, ok bool) {
	st, err := e.readState()
	if err != nil || !st.IsInitialized() {
		return "", "", false
	}
	k8s, err := e.adminClient()
	if err != nil {
		return "", "", false
	}
	v, err := k8s.Discovery().ServerVersion()
	if err != nil {
		fmt.Fprintf(e.errOut, "Notice: the cluster did not answer (%v); comparing with the configuration's Kubernetes version\n", err)
		return "", "", false
	}
	if ds, err := k8s.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, "joinservice", metav1.GetOptions{}); err == nil {
		for _, c := range ds.Spec.Template.Spec.Containers {
			if _, tag, found := strings.Cut(c.Image[strings.LastIndex(c.Image, "/")+1:], ":"); found {
				services = tag
			}
		}
	}
	return v.GitVersion, services, true
}

// imageCandidate measures the image in dir (default: the one beside the CLI) and compares it with the
// configured measurements. Only local images are measured here; other providers' images come with a signed
// measurements file (config fetch-measurements).
func (e *env) imageCandidate(cfg *config.Config, dir string) (*upgradeImage, error) {
	a, err := e.deps.artifacts()
	if err != nil {
		return nil, err
	}
	img := &upgradeImage{Configured: a.ConfiguredImageDir(cfg), Candidate: dir}
	if img.Candidate == "" {
		img.Candidate = a.InstalledImageDir()
	}
	if abs, err := filepath.Abs(img.Candidate); err == nil {
		img.Candidate = abs
	}
	if cfg.GetProvider() != cloudprovider.Local {
		img.Note = fmt.Sprintf("%s images are measured by their publisher: load their measurements with 'constellation config fetch-measurements'", cfg.GetProvider())
		return img, nil
	}
	m, err := measureImage(file.NewHandler(e.osFs), img.Candidate)
	if err != nil {
		if dir != "" {
			return nil, fmt.Errorf("measuring the image %s: %w", dir, err)
		}
		img.Note = fmt.Sprintf("no image beside the CLI to compare (%v); pass --%s", err, flagImage)
		return img, nil
	}
	img.Measurements = m
	img.ChangedPCRs = upgrade.ChangedPCRs(cfg.Attestation.Measurements, m)
	return img, nil
}

// writeUpgradeTargets writes the chosen Kubernetes version and the image with its measurements into the
// configuration, keeping the rest of the file. It returns the fields it changed.
func (e *env) writeUpgradeTargets(cfg *config.Config, res *upgradeCheckResult, kubernetes string) ([]string, error) {
	data, err := e.files.Read(config.FileName)
	if err != nil {
		return nil, err
	}
	var updated []string
	target := kubernetes
	if target == "" && len(res.Kubernetes.Targets) > 0 {
		target = res.Kubernetes.Targets[len(res.Kubernetes.Targets)-1].Version
	}
	if target != "" {
		if target, err = versions.ResolveKubernetes(target); err != nil {
			return nil, fmt.Errorf("--%s: %w", flagKubernetes, err)
		}
		if err := upgrade.CheckKubernetes(res.Kubernetes.Current, target); err != nil {
			return nil, err
		}
		if target != cfg.KubernetesVersion {
			if data, err = config.SetKubernetesVersion(data, target); err != nil {
				return nil, err
			}
			updated = append(updated, "kubernetesVersion")
		}
	}
	if img := res.Image; img != nil && img.Measurements != nil {
		if len(img.ChangedPCRs) > 0 {
			if data, err = config.SetMeasurements(data, img.Measurements); err != nil {
				return nil, err
			}
			updated = append(updated, "attestation.measurements")
		}
		if img.Candidate != img.Configured {
			if data, err = config.SetImage(data, img.Candidate); err != nil {
				return nil, err
			}
			updated = append(updated, "image")
		}
	}
	if len(updated) == 0 {
		return nil, nil
	}
	if err := e.files.Write(config.FileName, data, file.OptOverwrite); err != nil {
		return nil, err
	}
	return updated, nil
}

func (e *env) printUpgradeCheck(res *upgradeCheckResult) {
	k := res.Kubernetes
	fmt.Fprintf(e.out, "Kubernetes: %s (from the %s)\n", k.Current, k.Source)
	if len(k.Targets) == 0 {
		fmt.Fprintln(e.out, "  up to date: this CLI pins no newer version it can move to")
	}
	for _, t := range k.Targets {
		fmt.Fprintf(e.out, "  can move to %s (%s)", t.Version, t.Kind)
		if slices.Contains(k.NotBuilt, t.Version) {
			fmt.Fprintf(e.out, "; its components are not built on this machine yet: bazel/kubernetes/build.sh --version %s all", t.Version)
		}
		fmt.Fprintln(e.out)
	}
	if img := res.Image; img != nil {
		fmt.Fprintf(e.out, "Node image: %s\n", img.Configured)
		switch {
		case img.Note != "":
			fmt.Fprintf(e.out, "  %s\n", img.Note)
		case len(img.ChangedPCRs) == 0:
			fmt.Fprintf(e.out, "  %s: the same measurements as configured\n", img.Candidate)
		default:
			fmt.Fprintf(e.out, "  can move to %s: PCRs %s differ from the configured measurements\n", img.Candidate, pcrList(img.ChangedPCRs))
		}
	}
	fmt.Fprintf(e.out, "Services: %s beside the CLI", res.Services.CLI)
	if res.Services.Cluster != "" {
		fmt.Fprintf(e.out, ", %s in the cluster", res.Services.Cluster)
	}
	fmt.Fprintln(e.out)
	imageChanged := res.Image != nil && len(res.Image.ChangedPCRs) > 0
	switch {
	case len(res.Updated) > 0:
		fmt.Fprintf(e.out, "Wrote %s into %s.\n", strings.Join(res.Updated, ", "), e.path(config.FileName))
		if res.Kubernetes.Source == "cluster" {
			fmt.Fprintln(e.out, "Move the cluster there with 'constellation upgrade apply'.")
		}
	case len(k.Targets) > 0 || imageChanged:
		fmt.Fprintf(e.out, "Write the targets into %s with --%s.\n", e.path(config.FileName), flagUpdateConfig)
	}
}

func pcrList(pcrs []uint32) string {
	s := make([]string, len(pcrs))
	for i, p := range pcrs {
		s[i] = fmt.Sprint(p)
	}
	return strings.Join(s, ", ")
}
