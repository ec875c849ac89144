package node

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/constellation-go/constellation/localprovider/providerinfo"
)

// containerdNamespace is where the kubelet looks for images.
const containerdNamespace = "k8s.io"

// LoadImage imports a container image archive (a docker-archive or OCI image layout tarball, what
// `ctr images import` takes) into the running node's containerd, where the kubelet finds it: local nodes
// reach no registry. It returns the image references the archive carried. containerd keeps its images in
// memory (its root is a tmpfs), so a node that restarts has lost them.
func LoadImage(ctx context.Context, stateDir string, archive *os.File) ([]string, error) {
	// The archive's descriptor goes to ctr as its standard input: nothing is copied into the node first.
	stdout, stderr, err := collect(ctx, stateDir, archive,
		[]string{"ctr", "--address", ContainerdSocket, "-n", containerdNamespace, "images", "import", "-"})
	if err != nil {
		return nil, fmt.Errorf("ctr images import: %w", err)
	}
	refs := importedRefs(string(stdout))
	if len(refs) == 0 {
		return nil, fmt.Errorf("ctr images import named no image (is the file an image archive?): %s", strings.TrimSpace(string(stdout)+string(stderr)))
	}
	return refs, nil
}

// importedRefs reads the references from `ctr images import` output: "unpacking <ref> (sha256:...)...done".
func importedRefs(out string) []string {
	var refs []string
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "unpacking ")
		if !ok {
			continue
		}
		if ref, _, ok := strings.Cut(rest, " "); ok && ref != "" {
			refs = append(refs, ref)
		}
	}
	return refs
}

// LoadImageMain runs providerinfo.LoadImageCommand and exits, if the binary was started as that command
// (the CLI's `mini image load` runs the provider binary so, to link none of the node runtime itself).
func LoadImageMain() {
	if len(os.Args) < 2 || os.Args[1] != providerinfo.LoadImageCommand {
		return
	}
	if len(os.Args) != 5 {
		fmt.Fprintf(os.Stderr, "usage: %s %s CLUSTER NODE ARCHIVE\n", os.Args[0], providerinfo.LoadImageCommand)
		os.Exit(2)
	}
	cluster, name, path := os.Args[2], os.Args[3], os.Args[4]
	if !nameRE.MatchString(cluster) || !nameRE.MatchString(name) {
		fmt.Fprintf(os.Stderr, "cluster %q and node %q must be DNS labels\n", cluster, name)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	refs, err := loadImageFile(ctx, StateDirFor(cluster, name), path)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loading %s into node %s: %v\n", path, name, err)
		os.Exit(1)
	}
	for _, r := range refs {
		fmt.Println(r)
	}
	os.Exit(0)
}

func loadImageFile(ctx context.Context, stateDir, path string) ([]string, error) {
	if !Running(stateDir) {
		return nil, errors.New("the node is not running")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return LoadImage(ctx, stateDir, f)
}
