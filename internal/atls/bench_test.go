package atls_test

import (
	"crypto/tls"
	"io"
	"sync"
	"testing"

	"github.com/constellation-go/constellation/internal/atls"
	"github.com/constellation-go/constellation/internal/attestation"
	"github.com/constellation-go/constellation/internal/attestation/vtpm/vtpmtest"
)

// BenchmarkHandshake measures complete aTLS handshakes per second, each with fresh nonces, a fresh quote from
// a real swtpm and a full validation (signature, nonce, event-log replay, measurements) on the other side.
func BenchmarkHandshake(b *testing.B) {
	for _, mode := range []string{"server-attests", "client-attests", "mutual"} {
		b.Run(mode, func(b *testing.B) {
			serverIssuer, serverValidators := measuredParty(b, vtpmtest.Boot)
			clientIssuer, clientValidators := measuredParty(b, vtpmtest.Boot)
			switch mode {
			case "server-attests":
				serverValidators, clientIssuer = nil, nil
			case "client-attests":
				serverIssuer, clientValidators = nil, nil
			}
			serverCfg, err := atls.NewServerConfig(serverIssuer, serverValidators)
			if err != nil {
				b.Fatal(err)
			}
			addr := serve(b, serverCfg)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := dialOnce(addr, clientIssuer, clientValidators); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "handshakes/s")
		})
	}
}

func dialOnce(addr string, issuer attestation.Issuer, validators []attestation.Validator) error {
	cfg, err := atls.NewClientConfig(issuer, validators)
	if err != nil {
		return err
	}
	conn, err := tls.Dial("tcp", addr, cfg)
	if err != nil {
		return err
	}
	// One byte from the server confirms it accepted the client's attestation too.
	_, err = io.ReadFull(conn, make([]byte, 1))
	_ = conn.Close()
	return err
}

// serve accepts aTLS connections until the benchmark ends and answers each with one byte.
func serve(b *testing.B, cfg *tls.Config) string {
	b.Helper()
	lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			conn, err := lis.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer conn.Close()
				if err := conn.(*tls.Conn).Handshake(); err != nil {
					return
				}
				_, _ = conn.Write([]byte{1})
			}()
		}
	}()
	b.Cleanup(func() {
		_ = lis.Close()
		wg.Wait()
	})
	return lis.Addr().String()
}
