// Package localkms runs a server of the AWS KMS API on this machine: local-kms
// (github.com/nsmithuk/local-kms), embedded as a library, its keys in a LevelDB database. The local provider
// serves it on a cluster's bridge so that user-managed keys (kms://aws-kms) can be tried on one machine; it
// has no authentication and keeps its keys in plain files, so it is for trying things out, never for keys
// that protect real data.
package localkms

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/constellation-go/constellation/internal/kmsuri"
	"github.com/nsmithuk/local-kms/src/cmk"
	"github.com/nsmithuk/local-kms/src/config"
	"github.com/nsmithuk/local-kms/src/data"
	"github.com/nsmithuk/local-kms/src/handler"
	"github.com/sirupsen/logrus"
)

const (
	// Port is where the local provider serves the KMS on a cluster's bridge address.
	Port = kmsuri.LocalKMSPort
	// Region is the AWS region the KMS claims to be in (its ARNs carry it; clients must sign for it).
	Region = kmsuri.LocalKMSRegion
	// Account is the AWS account ID in the KMS's ARNs (an example ID of the AWS documentation).
	Account = "111122223333"
	// Drainer is LevelDB's memory-pool goroutine, which ends up to a second after its database closed, on
	// its own: goroutine leak checks of tests that run a Server ignore it.
	Drainer = "github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"
	// DefaultAlias names the key the local provider makes for a cluster.
	DefaultAlias = kmsuri.LocalKMSAlias
)

// maxRequestBody bounds a request: KMS requests are small (at most 4 KiB of plaintext, or key material to
// import), and the handlers read the whole body.
const maxRequestBody = 1 << 20

// shutdownTimeout bounds how long Close waits for requests in flight before it drops their connections.
const shutdownTimeout = 5 * time.Second

// configureOnce sets local-kms's process-wide settings. Its config.DatabasePath is left alone: only
// local-kms's own main reads it, and each Server here has its own database.
var configureOnce sync.Once

func configure() {
	config.AWSRegion = Region
	config.AWSAccountId = Account
}

// Server is a running KMS.
type Server struct {
	srv      *http.Server
	ln       net.Listener
	served   chan struct{}
	log      *slog.Logger
	reqLog   *logrus.Logger
	closeErr error
	once     sync.Once

	// mu is held shared by every request and exclusively by Close, so the database is never closed under a
	// request that a timed-out shutdown left running.
	mu     sync.RWMutex
	db     *data.Database
	closed bool
}

// Start opens (or creates, 0700) the KMS's database in dataDir and serves the KMS API on addr ("host:port";
// port 0 picks a free one) until Close. Its errors name the directory or the address, not the KMS: that is
// the caller's context. A database stays usable by later Starts, in this process or
// another, once Close returned; while a Server has it open, another Start on it fails.
func Start(addr, dataDir string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	configureOnce.Do(configure)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating the data directory: %w", err)
	}
	db, err := openDatabase(dataDir)
	if err != nil {
		return nil, fmt.Errorf("opening the database in %s: %w", dataDir, err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		db.Close()
		return nil, err
	}
	s := &Server{ln: ln, served: make(chan struct{}), log: log, reqLog: requestLogger(log), db: db}
	s.srv = &http.Server{
		Handler:           http.HandlerFunc(s.handle),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("local KMS stopped serving", "addr", ln.Addr().String(), "error", err)
		}
	}()
	log.Info("local KMS serving", "endpoint", s.Endpoint(), "dataDir", dataDir)
	return s, nil
}

// openDatabase opens the LevelDB database in dir: data.NewDatabase panics where it cannot (a database held
// by another Server, a corrupt one), which must not end the program that serves it.
func openDatabase(dir string) (db *data.Database, err error) {
	defer func() {
		if r := recover(); r != nil {
			db, err = nil, fmt.Errorf("%v", r)
		}
	}()
	return data.NewDatabase(dir), nil
}

// RotateKey rotates the key arn's material, as AWS's automatic rotation does: its next use adds a backing
// key (a new key version) that wraps new data keys, while blobs of the older versions still unwrap. The
// Server on dataDir must be closed (LevelDB admits one user).
func RotateKey(dataDir, arn string) error {
	db, err := openDatabase(dataDir)
	if err != nil {
		return fmt.Errorf("opening the local KMS's database in %s: %w", dataDir, err)
	}
	defer db.Close()
	key, err := db.LoadKey(arn)
	if err != nil {
		return fmt.Errorf("loading key %s: %w", arn, err)
	}
	aes, ok := key.(*cmk.AesKey)
	if !ok {
		return fmt.Errorf("key %s is not a symmetric key: only those rotate", arn)
	}
	aes.NextKeyRotation = time.Now().Add(-time.Second)
	return db.SaveKey(aes)
}

// Endpoint is the server's base URL, http://host:port of the address it listens on.
func (s *Server) Endpoint() string { return "http://" + s.ln.Addr().String() }

// Close stops serving, waits for requests in flight, and closes the database. It may be called again; it
// returns the first call's result.
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		if err := s.srv.Shutdown(ctx); err != nil {
			// Idle connections of clients that keep them: dropped.
			s.closeErr = s.srv.Close()
		}
		<-s.served
		s.mu.Lock()
		defer s.mu.Unlock()
		s.closed = true
		s.db.Close()
		s.log.Info("local KMS stopped", "endpoint", s.Endpoint())
	})
	return s.closeErr
}

// handle serves a KMS API request (POST / with X-Amz-Target: TrentService.<operation>, as local-kms's
// src.HandleRequest does), with the server's own request logger: src's logs every key operation in colour
// to stderr and cannot be redirected.
func (s *Server) handle(w http.ResponseWriter, r *http.Request) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		http.Error(w, "the local KMS is stopping", http.StatusServiceUnavailable)
		return
	}
	switch {
	case r.URL.Path != "/":
		http.Error(w, "Page not found", http.StatusNotFound)
		return
	case r.Method != http.MethodPost:
		http.Error(w, "Method Not Allowed", http.StatusMethodNotAllowed)
		return
	case !strings.Contains(r.Header.Get("Content-Type"), "json"):
		// Both application/x-amz-json-1.1 (the SDKs) and application/json.
		http.Error(w, "Only JSON based content types accepted", http.StatusUnsupportedMediaType)
		return
	}
	target := r.Header.Get("X-Amz-Target")
	op, ok := strings.CutPrefix(target, "TrentService.")
	if !ok || op == "" {
		http.Error(w, fmt.Sprintf("Passed X-Amz-Target (%s) is not implemented", target), http.StatusNotImplemented)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxRequestBody)
	resp, ok := s.call(r, op)
	if !ok {
		http.Error(w, fmt.Sprintf("Passed X-Amz-Target (%s) is not implemented", target), http.StatusNotImplemented)
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	w.WriteHeader(resp.Code)
	_, _ = io.WriteString(w, resp.Body)
}

// responseType is what every operation of local-kms's RequestHandler returns.
var responseType = reflect.TypeFor[handler.Response]()

// call runs the operation op of local-kms's request handler; ok is false if there is no such operation.
// Only methods shaped like an operation are called, and a panic in one (local-kms trusts some of its
// input) is an internal error of that request.
func (s *Server) call(r *http.Request, op string) (resp handler.Response, ok bool) {
	method := reflect.ValueOf(handler.NewRequestHandler(r, s.reqLog, s.db)).MethodByName(op)
	if !method.IsValid() || method.Type().NumIn() != 0 || method.Type().NumOut() != 1 || method.Type().Out(0) != responseType {
		return handler.Response{}, false
	}
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("local KMS operation failed", "operation", op, "panic", p)
			resp, ok = handler.NewResponse(http.StatusInternalServerError, map[string]string{
				"__type": "KMSInternalException", "message": fmt.Sprintf("%s failed", op),
			}), true
		}
	}()
	return method.Call(nil)[0].Interface().(handler.Response), true
}

// requestLogger is the logrus logger local-kms's handlers write to, forwarding to log: at debug level,
// since they log every operation and every rejected request (whose error the client gets anyway).
func requestLogger(log *slog.Logger) *logrus.Logger {
	l := logrus.New()
	l.SetOutput(io.Discard)
	l.SetLevel(logrus.InfoLevel)
	l.AddHook(slogHook{log})
	return l
}

type slogHook struct{ log *slog.Logger }

func (h slogHook) Levels() []logrus.Level { return logrus.AllLevels }

func (h slogHook) Fire(e *logrus.Entry) error {
	level := slog.LevelDebug
	if e.Level <= logrus.ErrorLevel {
		level = slog.LevelError
	}
	h.log.Log(context.Background(), level, "local KMS: "+strings.TrimSpace(e.Message))
	return nil
}

// Client returns a client of the KMS at endpoint (a Server's Endpoint). Its credentials are dummies, which
// local-kms does not check; it connects directly (never through a proxy of the environment) and without
// keeping connections, so a client outlives restarts of the server without stale connections.
func Client(endpoint string) *kms.Client {
	return kms.New(kms.Options{
		Region:           Region,
		BaseEndpoint:     aws.String(endpoint),
		Credentials:      credentials.NewStaticCredentialsProvider("local-kms", "local-kms", ""),
		RetryMaxAttempts: 3,
		HTTPClient: &http.Client{
			Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
			Timeout:   30 * time.Second,
		},
	})
}

// EnsureKey returns the ID of the key alias (alias/<name>) names at endpoint, first creating a symmetric
// encryption key under it if there is none. It does not check the key's state: a key that was disabled to
// try an outage stays disabled.
func EnsureKey(ctx context.Context, endpoint, alias string) (keyID string, err error) {
	if !strings.HasPrefix(alias, "alias/") || alias == "alias/" {
		return "", fmt.Errorf("local KMS: alias %q must be alias/<name>", alias)
	}
	c := Client(endpoint)
	id, err := aliasTarget(ctx, c, alias)
	if err == nil {
		return id, nil
	}
	if _, notFound := errors.AsType[*types.NotFoundException](err); !notFound {
		return "", fmt.Errorf("local KMS at %s: looking up %s: %w", endpoint, alias, err)
	}
	created, err := c.CreateKey(ctx, &kms.CreateKeyInput{Description: aws.String("Constellation key " + alias)})
	if err != nil {
		return "", fmt.Errorf("local KMS at %s: creating the key for %s: %w", endpoint, alias, err)
	}
	if created.KeyMetadata == nil || created.KeyMetadata.KeyId == nil {
		return "", fmt.Errorf("local KMS at %s: CreateKey returned no key ID", endpoint)
	}
	_, err = c.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(alias), TargetKeyId: created.KeyMetadata.KeyId})
	if _, exists := errors.AsType[*types.AlreadyExistsException](err); exists {
		// Another EnsureKey was faster: its key is the alias's (the one created here stays unused).
		if id, err = aliasTarget(ctx, c, alias); err != nil {
			return "", fmt.Errorf("local KMS at %s: looking up %s: %w", endpoint, alias, err)
		}
		return id, nil
	}
	if err != nil {
		return "", fmt.Errorf("local KMS at %s: creating %s: %w", endpoint, alias, err)
	}
	return *created.KeyMetadata.KeyId, nil
}

func aliasTarget(ctx context.Context, c *kms.Client, alias string) (string, error) {
	out, err := c.DescribeKey(ctx, &kms.DescribeKeyInput{KeyId: aws.String(alias)})
	if err != nil {
		return "", err
	}
	if out.KeyMetadata == nil || out.KeyMetadata.KeyId == nil {
		return "", fmt.Errorf("DescribeKey of %s returned no key ID", alias)
	}
	return *out.KeyMetadata.KeyId, nil
}
