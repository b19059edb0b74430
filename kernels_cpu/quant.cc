// Placeholder: replaced by the dequantisers.
#include "kernels_cpu/quant.h"
