package packages

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// Component and Architecture of the repositories WriteRepo makes.
const (
	RepoComponent    = "main"
	RepoArchitecture = "amd64"
)

// ControlReader returns the control fields of a .deb, as `dpkg-deb --field` prints them.
type ControlReader func(deb string) ([]byte, error)

// DpkgDebControl reads the control fields with the host's dpkg-deb, which handles every compression
// Debian uses for control.tar.
func DpkgDebControl(deb string) ([]byte, error) {
	out, err := exec.Command("dpkg-deb", "--field", deb).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("dpkg-deb --field %s: %w: %s", deb, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("dpkg-deb --field %s: %w", deb, err)
	}
	return out, nil
}

// WriteRepo makes an apt repository of the lock's packages at dir, serving exactly one suite with one
// component: dir/pool/<file>.deb (hard links to debsDir, or copies) and dir/dists/<suite>/Release with
// main/binary-amd64/Packages(.gz). The repository is unsigned: apt must be told to trust it, which is safe
// because every file was checked against the lock's sha256 (OpenBundle) and apt checks each .deb against
// the sha256 in Packages.
func WriteRepo(l Lock, debsDir, dir, suite string, control ControlReader) error {
	if len(l) == 0 {
		return errors.New("no packages for the repository")
	}
	pool := filepath.Join(dir, "pool")
	index := filepath.Join(dir, "dists", suite, RepoComponent, "binary-"+RepoArchitecture)
	for _, d := range []string{pool, index} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	var packages bytes.Buffer
	done := map[string]bool{}
	for _, e := range l {
		name := e.DebFileName()
		if done[name] {
			continue
		}
		done[name] = true
		// Named as in Debian's pool: without the epoch, so that no ":" or "%" ends up in a URL (debootstrap's
		// wget would not escape it, and the server would decode it).
		poolName := e.poolFileName()
		if done["pool/"+poolName] {
			return fmt.Errorf("two packages of the repository would be pool/%s", poolName)
		}
		done["pool/"+poolName] = true
		src := filepath.Join(debsDir, name)
		dst := filepath.Join(pool, poolName)
		if err := os.Link(src, dst); err != nil {
			if err := copyFile(src, dst); err != nil {
				return err
			}
		}
		fields, err := control(dst)
		if err != nil {
			return err
		}
		fi, err := os.Stat(dst)
		if err != nil {
			return err
		}
		packages.Write(bytes.TrimRight(fields, "\n"))
		fmt.Fprintf(&packages, "\nFilename: pool/%s\nSize: %d\nSHA256: %s\n\n", poolName, fi.Size(), e.SHA256)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.ModTime = time.Unix(0, 0)
	if _, err := zw.Write(packages.Bytes()); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	rel := &strings.Builder{}
	fmt.Fprintf(rel, "Origin: constellation-package-bundle\nLabel: constellation-package-bundle\nSuite: %s\nCodename: %s\n", suite, suite)
	fmt.Fprintf(rel, "Architectures: %s\nComponents: %s\nDescription: packages of one node image build, from a bundle\nSHA256:\n", RepoArchitecture, RepoComponent)
	for _, f := range []struct {
		name string
		data []byte
	}{{"Packages", packages.Bytes()}, {"Packages.gz", gz.Bytes()}} {
		if err := os.WriteFile(filepath.Join(index, f.name), f.data, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(f.data)
		fmt.Fprintf(rel, " %s %d %s/binary-%s/%s\n", hex.EncodeToString(sum[:]), len(f.data), RepoComponent, RepoArchitecture, f.name)
	}
	return os.WriteFile(filepath.Join(dir, "dists", suite, "Release"), []byte(rel.String()), 0o644)
}

// ServeRepo serves dir over HTTP on ln until ctx ends. Callers listen on loopback only.
func ServeRepo(ctx context.Context, dir string, ln net.Listener) error {
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// poolFileName is the package's file name in Debian's pool: "<name>_<version without epoch>_<arch>.deb".
func (e Entry) poolFileName() string {
	v := e.Version
	if _, rest, ok := strings.Cut(v, ":"); ok {
		v = rest
	}
	return e.Name + "_" + v + "_" + e.Arch + ".deb"
}
