// The workload the end-to-end test keeps running through an upgrade: an HTTP server that answers with the
// content of a file on a volume (on the node's encrypted state disk), which the first pod on a node writes
// once. An answer that changed after the upgrade means the data was lost.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

func main() {
	listen := flag.String("listen", ":8080", "address to serve on")
	data := flag.String("data", "/data/workload.txt", "the file whose content every answer carries")
	flag.Parse()
	content, err := readOrCreate(*data, fmt.Sprintf("written by %s at %s\n", os.Getenv("POD_NAME"), time.Now().UTC().Format(time.RFC3339Nano)))
	if err != nil {
		log.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(content) })
	srv := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	log.Fatal(srv.ListenAndServe())
}

// readOrCreate returns the file's content, writing initial first if it does not exist. Pods on the same node
// may start at once: the file appears whole (a hard link of a complete temporary file) or not at all, and the
// first one wins.
func readOrCreate(path, initial string) ([]byte, error) {
	content, err := os.ReadFile(path)
	if !errors.Is(err, fs.ErrNotExist) {
		return content, err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".workload-*")
	if err != nil {
		return nil, err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(initial); err != nil {
		return nil, err
	}
	if err := tmp.Sync(); err != nil {
		return nil, err
	}
	if err := tmp.Close(); err != nil {
		return nil, err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	return os.ReadFile(path)
}
