package interceptors_test

import (
	"io"
	"log/slog"

	"github.com/flowgate/flowgate/interceptors"
)

func benchJSONHandler(w io.Writer) slog.Handler { return interceptors.NewJSONHandler(w, nil) }
