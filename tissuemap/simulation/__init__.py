"""Ground-truth data for tissuemap: a single-cell reference and Visium samples with known cells in every spot.

The generative model (every constant in :class:`~tissuemap.simulation.parameters.SimulationParameters`):

1. Profiles (:mod:`.profiles`). Cell types f come in lineages. Gene g's expected molecules per cell mu_fg are a
   log-normal baseline times type-level noise, times a lineage fold change on lineage markers and a larger one on
   the type's own markers, scaled to the type's RNA content; 13 ``MT-`` genes carry ~5% of it.
2. Reference (:mod:`.reference`). Imbalanced type sizes (rare types: a few dozen cells); each cell comes from a
   10x reaction e (3' or 5' chemistry), types spread over reactions evenly or, with ``confounding``, concentrated
   in a few. X_cg ~ NB((mu_fg z_c + s_eg) y_e t_g, alpha_g): size factor z_c, reaction detection y_e, ambient s_eg,
   chemistry effect t_g, gene overdispersion alpha_g = 1 / v_g^2 with v_g ~ Exponential(3).
3. Tissue (:mod:`.layout`, :mod:`.spatial`). Each sample is an irregular section on a Visium hexagonal grid, cut
   into smooth zones. Zones mix zone-specific and ubiquitous types at a zone cell density; the true cells w_sf are
   Poisson around ``n_cells_per_location`` times smooth within-tissue variation; rare types occupy a few spots.
4. Visium counts (:mod:`.spatial`), exactly the cell2location model: D_sg ~ NB((m_g sum_f w_sf mu_fg + s_g) y_s,
   alpha_sg), platform effect m_g, sample ambient s_g, spot detection y_s ~ Gamma(detection_alpha,
   detection_alpha / y_e) around the sample's y_e.
5. Files (:mod:`.spaceranger`, :mod:`.image`, :mod:`.dataset`): Space Ranger ``outs/`` folders (1.x and 2.x
   positions layouts alternate), ``reference.h5ad``, truth tables, a samplesheet.

Use :func:`tissuemap.simulation.dataset.simulate_dataset`. This package file imports nothing, so that the command
line can read the parameters' defaults without loading numpy.
"""
