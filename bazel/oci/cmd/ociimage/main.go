// Command ociimage writes a single-binary container image archive; the oci_image Bazel rule runs it.
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"

	"github.com/constellation-go/constellation/bazel/oci/ociimage"
)

func main() {
	binary := flag.String("binary", "", "executable to put into the image")
	binaryPath := flag.String("path", "", "absolute path of the executable in the image")
	tag := flag.String("tag", "", "image reference, e.g. constellation/keyservice:v0.1.0")
	out := flag.String("out", "", "archive to write")
	idOut := flag.String("id-out", "", "file to write the image ID (config digest) to; unlike a manifest digest it does not depend on the archive format")
	flag.Parse()
	if err := run(*binary, *binaryPath, *tag, *out, *idOut); err != nil {
		fmt.Fprintln(os.Stderr, "ociimage:", err)
		os.Exit(1)
	}
}

func run(binary, binaryPath, tag, out, idOut string) error {
	if binary == "" || binaryPath == "" || tag == "" || out == "" {
		return fmt.Errorf("--binary, --path, --tag and --out are required")
	}
	content, err := os.ReadFile(binary)
	if err != nil {
		return err
	}
	img, err := ociimage.Build(ociimage.Spec{Binary: content, BinaryPath: binaryPath, Tag: tag})
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	if err := ociimage.WriteArchive(w, tag, img); err != nil {
		_ = f.Close()
		return err
	}
	if err := w.Flush(); err != nil {
		_ = f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if idOut != "" {
		id, err := img.ConfigName()
		if err != nil {
			return err
		}
		return os.WriteFile(idOut, []byte(id.String()+"\n"), 0o644)
	}
	return nil
}
