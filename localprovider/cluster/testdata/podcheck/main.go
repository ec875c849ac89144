// Command podcheck is the pod-network probe of the cluster test: "serve" answers HTTP on :8080, "get URL"
// fetches URL and exits 0 on a 200 answer.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: podcheck serve | get URL")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "podcheck") })
		fmt.Fprintln(os.Stderr, http.ListenAndServe(":8080", nil))
		os.Exit(1)
	case "get":
		client := &http.Client{Timeout: 5 * time.Second}
		for i := 0; ; i++ {
			resp, err := client.Get(os.Args[2])
			if err == nil {
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					fmt.Printf("reached %s: %s", os.Args[2], body)
					return
				}
				err = fmt.Errorf("status %s", resp.Status)
			}
			fmt.Fprintln(os.Stderr, err)
			if i == 30 {
				os.Exit(1)
			}
			time.Sleep(time.Second)
		}
	}
}
