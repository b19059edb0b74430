// Placeholder: replaced by the GGUF reader/writer.
#include "runtime/core/gguf.h"
