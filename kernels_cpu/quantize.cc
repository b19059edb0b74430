// Placeholder: replaced by the quantisers.
#include "kernels_cpu/quant.h"
