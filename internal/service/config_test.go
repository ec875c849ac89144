package service

import (
	"bytes"
	"flag"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseFlagsWithEnv(t *testing.T) {
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	uri := fs.String("kms-uri", "kms://cluster-kms", "")
	addr := fs.String("grpc-addr", ":9000", "")
	port := fs.Int("port", 1, "")
	t.Setenv("KEYSERVICE_KMS_URI", "kms://from-env")
	t.Setenv("KEYSERVICE_GRPC_ADDR", ":1111")
	require.NoError(t, ParseFlags(fs, "KEYSERVICE", []string{"--grpc-addr", ":2222"}))
	assert.Equal(t, "kms://from-env", *uri, "env fills a flag not given")
	assert.Equal(t, ":2222", *addr, "the command line wins over env")
	assert.Equal(t, 1, *port)

	fs = flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("port", 1, "")
	t.Setenv("KEYSERVICE_PORT", "not-a-number")
	err := ParseFlags(fs, "KEYSERVICE", nil)
	assert.ErrorContains(t, err, "KEYSERVICE_PORT")
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	log, err := NewLogger(&buf, "debug", "json")
	require.NoError(t, err)
	log.Debug("hello", "k", "v")
	assert.Contains(t, buf.String(), `"msg":"hello"`)
	_, err = NewLogger(&buf, "loud", "json")
	assert.Error(t, err)
	_, err = NewLogger(&buf, "info", "xml")
	assert.Error(t, err)
}
