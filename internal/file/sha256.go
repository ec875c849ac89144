package file

import (
	"crypto/sha256"
	"encoding/hex"
	"io"

	"github.com/spf13/afero"
)

// SHA256 returns the hex SHA-256 of the file at path on the OS file system, streamed: the form in which
// component pins and image checksums record it.
func SHA256(path string) (string, error) {
	return NewHandler(afero.NewOsFs()).SHA256(path)
}

// SHA256 returns the hex SHA-256 of the file name, streamed.
func (h Handler) SHA256(name string) (string, error) {
	f, err := h.fs.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sum := sha256.New()
	if _, err := io.Copy(sum, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(sum.Sum(nil)), nil
}
